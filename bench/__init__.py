"""`make bench` (`python -m bench`): the node's benchmarks, one module per section (bench/intake.py, ...),
each with `TITLE` and `run(workdir) -> list[Row]`, printed by bench/table.py."""
