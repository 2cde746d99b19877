"""Chapter 6: training at scale -- collectives, data parallelism (DDP), ZeRO, tensor parallelism
and FSDP, written by hand with ``torch.distributed`` and checked against PyTorch's own.

Every module here runs inside one process of a group: one process per rank, started by
``torchrun --nproc_per_node N ...`` (or, in the tests, by ``grader/ranks.py``), which joins the
group with :func:`.dist_utils.setup`. On CPU the backend is gloo, on GPUs NCCL; the code is the
same. The model trained is chapter 3's GPT, from the same tree, so the learner's own GPT is what
scales.
"""
