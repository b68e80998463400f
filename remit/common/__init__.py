"""The floor under every stage: what annotation, training, the format and the experiments all use.

- `errors`: one-line failures (`run_command`) and operating-system errors described with a fix
- `flags`: command-line flags generated from a config dataclass
- `quiet`: the libraries' own output hidden unless asked for
- `faults`: fail points for crash tests
- `atomic`: files written under a temporary name and renamed
- `requires`: install hints for optional extras
- `lease`: one live process per piece of work (an annotation unit, a training run folder)
- `listing`: a repeated condition said once ("the first five ... (N in all)")

It needs only the standard library: importing it loads no engine.
"""
