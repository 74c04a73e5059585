"""envconv benchmarks: ratios of two things measured in the same process (see README.md here)."""
