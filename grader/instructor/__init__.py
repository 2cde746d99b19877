"""What an instructor's run adds to the grader: isolation and policy for untrusted submissions."""
