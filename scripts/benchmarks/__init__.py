"""The dfjob benchmark (`scripts/bench`): every dfjob figure next to a hand-written baseline measured in the same run.

`scripts/bench --help` says what each scenario measures. The package: `harness` holds the command
line and runs every registered scenario on every backend; `servers` makes the fresh databases,
`procs` starts and samples processes, `results` holds the figures and their goals and renders them,
`baseline` is the hand-written queue, `flows` the no-op flow classes dfjob's workers import.

A scenario is one module with a function `name(bench, server)` whose docstring is its --help entry:
it measures dfjob and its baseline on fresh databases (`with bench.fresh(server, label) as env`) and
adds one `Figure` per result (`bench.add(server.name, figure)`). The module ends with
`SCENARIO = Scenario(function, keys, goals)`, and `scenarios.SCENARIOS` lists it by name.

Nothing is imported here: dfjob's worker processes import `benchmarks.flows`, and should pay for
nothing else.
"""
