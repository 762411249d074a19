"""Running a question's code, as its own layer under the graph: recognise.py finds what can
be run (pure), sandbox.py runs it without the solver's rights (bubblewrap, as nobody, with
limits; cgroups.py caps a run's processes together), evidence.py reads what the runs say
about the options (pure)."""
