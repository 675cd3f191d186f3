"""Design-space sweeps: one sweep file, a grid of chip variants, real compiles of real models on
each, and rows a hardware engineer compares (latency, energy, power, area, utilization, bytes).

    spec.py     the sweep file: a base chip, the fields to vary (dotted paths), the workloads
    point.py    one point: compile for its chip, run device-resident on the simulator, its rows
    store.py    finished points on disk, keyed by chip, workload and compiler, so a sweep resumes
    runner.py   serial, a local process pool or Ray; the progress bar
    report.py   results.csv, the table, pareto.png, sensitivity.png, summary.md

`ember.sweep(path)` and `ember sweep PATH` run one.
"""
