"""A federated run's settings: one typed dataclass, each field with its default and its
help in one place.

Flower carries a run's settings as a flat run config (`flwr run --run-config`, the app's
`[tool.flwr.app.config]`, `Context.run_config`): keys such as `local-steps`, `dp.delta`,
`fair-lambda`. `FederatedConfig` is that run config, typed: `from_run_config` reads a
flat mapping over the defaults and checks every value (a bad one is a `RunConfigError`
naming the key), and the config reads back as the same flat mapping (`cfg["local-steps"]`,
`dict(cfg)`), so it goes wherever a run config goes. `lorakit federated run --help` and
the app bundle's pyproject are derived from the fields (`options`).

The per-client DP-SGD settings (`DPConfig`, `dp.*` keys, privacy.py) and LoRA-FAIR's
server correction (`FairConfig`, `fair-*` keys, aggregation.py) are dataclasses of their
own, nested here; `lorakit federated fit` takes `DPConfig` as `--model.dp.*`.

It imports neither torch nor Flower (`run --help` reads it alone).
"""
from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import RunConfigError

STRATEGIES = ("fedavg", "ffa", "fair", "fedsb")
BASES = ("tiny", "minilm")
FEDSB_INITS = ("gradient", "random")
EVAL_SPLITS = ("test", "val")
FAIR_SOLVERS = ("sgd", "closed_form")
FAIR_SIMILARITIES = ("cosine", "column_cosine")


def option(default, help: str, *, key: str | None = None, choices: tuple | None = None,
           minimum: float | None = None):
    """A config field: its default, its help, and optionally its run-config key (default:
    the field name with dashes), its allowed values and its smallest value."""
    return field(default=default, metadata={"help": help, "key": key, "choices": choices,
                                            "minimum": minimum})


def nested(kind, help: str, prefix: str):
    """A field holding another config dataclass whose keys are `prefix` + its own."""
    return field(default_factory=kind, metadata={"help": help, "prefix": prefix})


def quoted(values) -> str:
    return ", ".join(repr(v) for v in values)


def check_choice(key: str, value, choices) -> None:
    if value not in choices:
        raise RunConfigError(f"federated: unknown {key} {value!r}; choose one of "
                             f"{quoted(choices)}")


@dataclass(frozen=True)
class DPConfig:
    """Per-client differential privacy (DP-SGD on the client's local steps)."""

    enabled: bool = option(False, "train each client with DP-SGD (per-sample clipping and "
                                  "Gaussian noise)")
    noise_multiplier: float = option(1.0, "σ: the noise std over the clipping bound C "
                                          "(unless target_epsilon)", minimum=0.0)
    max_grad_norm: float = option(1.0, "C: each sample's gradient is clipped to this L2 norm",
                                  minimum=0.0)
    delta: float = option(1e-5, "δ of the reported (ε, δ)", minimum=0.0)
    target_epsilon: float = option(0.0, "> 0: solve σ so the whole run spends this ε "
                                        "(overrides noise_multiplier; federated: all rounds' "
                                        "local steps; fit: the trainer's steps)", minimum=0.0)

    def __post_init__(self) -> None:
        check_fields(self, "dp.")

    @classmethod
    def from_settings(cls, cfg: Mapping) -> DPConfig:
        """From a flat run config (`dp.enabled`, `dp.noise_multiplier`, ...)."""
        return read(cls, cfg, "dp.")


@dataclass(frozen=True)
class FairConfig:
    """LoRA-FAIR's server-side correction (Bian et al., ICCV 2025, Eq. 8)."""

    solver: str = option("sgd", "sgd: the paper's gradient steps on 1 − similarity + λ‖ΔB‖²; "
                                "closed_form: the Frobenius (ridge) version of the problem, "
                                "solved exactly", choices=FAIR_SOLVERS)
    similarity: str = option("cosine", "cosine: of the whole matrices; column_cosine: mean "
                                       "over matching columns", choices=FAIR_SIMILARITIES)
    steps: int = option(1000, "SGD steps per round", minimum=0)
    lr: float = option(0.01, "SGD step size", minimum=0.0)
    lam: float = option(0.01, "λ, the weight of ‖ΔB‖²_F", key="lambda", minimum=0.0)

    def __post_init__(self) -> None:
        check_fields(self, "fair-")

    @classmethod
    def from_settings(cls, cfg: Mapping) -> FairConfig:
        """From a flat run config (`fair-solver`, `fair-similarity`, `fair-steps`, ...)."""
        return read(cls, cfg, "fair-")


@dataclass(frozen=True)
class FederatedConfig(Mapping):
    """The settings of one federated run, in Flower's run-config key order."""

    strategy: str = option("fedavg", "aggregation strategy: fedavg, ffa, fair or fedsb",
                           choices=STRATEGIES)
    rank: int = option(4, "adapter rank r", minimum=1)
    alpha: float = option(8.0, "adapter alpha (scale alpha / r)")
    lr: float = option(1e-2, "clients' learning rate (AdamW)", minimum=0.0)
    local_steps: int = option(20, "training steps each client takes per round", minimum=0)
    batch_size: int = option(16, "client batch size (the expected batch under DP's Poisson "
                                 "sampling)", minimum=1)
    seed: int = option(0, "seed of the base head, the shared adapter init, the data split "
                          "and the noise")
    clients: int = option(2, "number of clients (virtual clients, or SuperNodes under "
                             "deployment)", minimum=1)
    dirichlet: float = option(0.0, "0: one domain per client; > 0: a Dirichlet(alpha) split "
                                   "over domain x label")
    base: str = option("tiny", "tiny (random BERT, synthetic four-domain tokens) or minilm "
                               "(all-MiniLM-L6-v2, four sentiment domains)", choices=BASES)
    rounds: int = option(2, "federated rounds", minimum=0)
    head: int = option(1, "1: train and average the classification head too "
                          "(modules_to_save); 0: frozen", choices=(0, 1))
    min_clients: int = option(0, "fewest connected clients a round goes on with (0: all of "
                                 "them); a client that dies mid-round is left out of that "
                                 "round", minimum=0)
    round_timeout: float = option(600.0, "seconds the server waits for a round's replies",
                                  minimum=0.0)
    history_file: str = option("", "where the ServerApp writes its per-round record (JSON)")
    dp: DPConfig = nested(DPConfig, "per-client DP-SGD", "dp.")
    train_per_domain: int = option(256, "training sentences per domain (minilm)", minimum=1)
    test_per_domain: int = option(128, "held-out test sentences per domain (minilm)",
                                  minimum=1)
    fair: FairConfig = nested(FairConfig, "LoRA-FAIR", "fair-")
    fedsb_init: str = option("gradient", "Fed-SB's frozen B and A: gradient (LoRA-SB's init "
                                         "from the clients' averaged gradient, gathered in one "
                                         "init round before round 1) or random (random "
                                         "orthonormal B and A, R = 0)", choices=FEDSB_INITS)
    init_batches: int = option(4, "batches each client averages its gradient over for "
                                  "Fed-SB's init (under DP: DP-SGD steps, counted in "
                                  "epsilon)", minimum=1)
    eval_split: str = option("test", "where the global adapter is scored each round: test, "
                                     "or val (the validation split, for choosing settings)",
                             choices=EVAL_SPLITS)

    def __post_init__(self) -> None:
        check_fields(self, "")
        if self.min_clients > self.clients:
            raise RunConfigError(f"federated: min-clients {self.min_clients} is more than "
                                 f"clients {self.clients}: no round could start; lower "
                                 "min-clients (0: all clients)")

    @classmethod
    def from_run_config(cls, run_config: Mapping | None = None) -> FederatedConfig:
        """Flower's flat run config (any subset of the keys) over the defaults, each value
        converted to its field's type and checked; an unknown key is refused with the
        closest known one."""
        given = dict(run_config or {})
        known = [key for key, *_ in options(cls)]
        for key in given:
            if key not in known:
                close = ([k for k in known if k.startswith(key)]
                         or difflib.get_close_matches(key, known, n=1))
                hint = (f"did you mean {close[0]!r}?" if close
                        else "`lorakit federated run --help` lists them")
                raise RunConfigError(f"federated: unknown run-config key {key!r}; {hint}")
        return read(cls, given)

    # -- the flat run-config view ---------------------------------------------------------
    def to_run_config(self) -> dict:
        return dict(self)

    def __getitem__(self, key: str):
        for flat, obj, f in _leaves(self):
            if flat == key:
                return getattr(obj, f.name)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (flat for flat, _, _ in _leaves(self))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    # -- what follows from the settings --------------------------------------------------
    @property
    def gradient_init(self) -> bool:
        """Whether this run starts with Fed-SB's init round."""
        return self.strategy == "fedsb" and self.fedsb_init == "gradient"

    @property
    def init_steps(self) -> int:
        """The DP-SGD steps a client spends in the init round (0 without one)."""
        return self.init_batches if self.gradient_init else 0

    @property
    def least_clients(self) -> int:
        """The replies a round needs (Flower's minimum-nodes rule)."""
        return self.min_clients or self.clients


def settings(run_config: Mapping | None = None) -> FederatedConfig:
    """The run's settings: `run_config` (flat, Flower's keys) over the defaults, checked."""
    return FederatedConfig.from_run_config(run_config)


# --- fields, keys and values ----------------------------------------------------------
def _key(f, prefix: str = "") -> str:
    """A field's run-config key: `local-steps`, `dp.noise_multiplier`, `fair-steps`."""
    if f.metadata.get("key"):
        return prefix + f.metadata["key"]
    return prefix + (f.name if prefix.endswith(".") else f.name.replace("_", "-"))


def _kind(f) -> str:
    return f.type if isinstance(f.type, str) else f.type.__name__


def _leaves(obj, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(flat key, the dataclass holding it, its field) of every setting, in order."""
    for f in fields(obj):
        if "prefix" in f.metadata:
            yield from _leaves(getattr(obj, f.name), prefix + f.metadata["prefix"])
        else:
            yield _key(f, prefix), obj, f


def options(cls=FederatedConfig, prefix: str = "", label: str = "") -> list[tuple]:
    """(flat key, type name, choices, help) of every setting of `cls`, in run-config
    order: what `lorakit federated run --help` is made from."""
    out = []
    for f in fields(cls):
        if "prefix" in f.metadata:
            out += options(f.default_factory, prefix + f.metadata["prefix"],
                           f"{f.metadata['help']}: ")
        else:
            out.append((_key(f, prefix), _kind(f), f.metadata["choices"],
                        label + f.metadata["help"]))
    return out


_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no")


def convert(key: str, kind: str, value):
    """`value` as the type `kind` names (`bool`, `int`, `float`, `str`), or a
    RunConfigError naming the key."""
    def refuse(what: str) -> RunConfigError:
        return RunConfigError(f"federated: {key} must be {what}, got {value!r}")
    if kind == "bool":
        if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
            return bool(value)
        if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        raise refuse("true or false")
    if kind == "int":
        if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
            return int(value)
        try:
            return int(str(value))
        except ValueError:
            raise refuse("a whole number") from None
    if kind == "float":
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return float(str(value))
        except ValueError:
            raise refuse("a number") from None
    if not isinstance(value, str):
        raise refuse("a string")
    return value


def read(cls, given: Mapping, prefix: str = ""):
    """An instance of config dataclass `cls` from a flat mapping (keys `prefix` + ...),
    defaults for what it does not hold."""
    values = {}
    for f in fields(cls):
        if "prefix" in f.metadata:
            values[f.name] = read(f.default_factory, given, prefix + f.metadata["prefix"])
        elif (key := _key(f, prefix)) in given:
            values[f.name] = convert(key, _kind(f), given[key])
    return cls(**values)


def check_fields(obj, prefix: str) -> None:
    """Each field of config dataclass `obj` converted to its type, one of its choices and
    not below its minimum; a RunConfigError names the first that is not by its key."""
    for f in fields(obj):
        if "prefix" in f.metadata:
            continue
        key = _key(f, prefix)
        value = convert(key, _kind(f), getattr(obj, f.name))
        object.__setattr__(obj, f.name, value)      # frozen: set once, while being made
        if f.metadata["choices"] is not None:
            check_choice(key, value, f.metadata["choices"])
        low = f.metadata["minimum"]
        if low is not None and value < low:
            raise RunConfigError(f"federated: {key} must be at least {low}, got {value!r}")
