set -u
python -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available(), torch.cuda.get_device_name(0))"
python -c "import rich, regex" 2>/dev/null || export PYTHONPATH=$PWD/.gpu_deps
python -c "import rich, regex, pytest_timeout; print('deps ok')"
echo "== train on cuda (default device and precision)"
time python -m solutions.ch3 train --max-steps 300 --out $OUT/run --quiet 2>&1 | tail -5
echo "== sample twice, same seed"
python -m solutions.ch3 sample --checkpoint $OUT/run --prompt "the " --max-new-tokens 120 --seed 7 > $OUT/s1.txt 2>&1
python -m solutions.ch3 sample --checkpoint $OUT/run --prompt "the " --max-new-tokens 120 --seed 7 > $OUT/s2.txt 2>&1
cat $OUT/s1.txt; cmp $OUT/s1.txt $OUT/s2.txt && echo "same text: yes"
echo "== sample on cpu from the cuda checkpoint"
python -m solutions.ch3 sample --checkpoint $OUT/run --prompt "the " --max-new-tokens 60 --seed 7 --device cpu 2>&1 | tail -3
echo "== resume on cuda"
python -m solutions.ch3 train --max-steps 100 --out $OUT/r2 --quiet 2>&1 | tail -2
python -m solutions.ch3 train --max-steps 200 --out $OUT/r2 --resume --quiet 2>&1 | tail -2
echo "== benchmarks"
python benchmarks/bench_train.py --device cuda --steps 100 2>&1 | tail -4
python benchmarks/bench_train.py --device cuda --precision bf16 --steps 100 2>&1 | tail -4
python benchmarks/bench_train.py --device cpu --steps 30 2>&1 | tail -4
python benchmarks/bench_sampling.py --device cuda 2>&1 | tail -4
echo "== stage tests (CPU tests, torch on this machine)"
timeout 200 python -m pytest tests/ch2 tests/ch3 -q -x -k "not e2e" -p no:cacheprovider 2>&1 | tail -5
rm -rf $OUT/run/*.pt $OUT/r2
