"""AttackSpec: one configured attack of any supported type, with its threat model and a description.
What it describes runs through `advneurons.attacks.runner.run_attack`, kept apart so that code that only
describes attacks (tables, settings) does not depend on, and is not re-run for, every attack's implementation.

Config entries give pixel amounts (eps, step_size, sigma) in 1/255 units; AttackSpec holds them in [0, 1]
units. Optimiser settings (lr, delta, search_sigma, initial_const, confidence, decay) are plain numbers as
the papers state them. Parameters left out take the papers' settings (docs/methods.md, the paper preset and the digits default), listed in
`PARAMETERS`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from advneurons.attacks.core import from_255
from advneurons.attacks.ensemble import NORMS, STANDARD_ATTACKS
from advneurons.attacks.noise import severity_sigma
from advneurons.attacks.white_box import TARGET_RULES

# type -> {parameter: default}; a default of None is derived (step size) or must be given (gaussian).
PARAMETERS: dict[str, dict] = {
    "fgsm": {},
    "step_ll": {},
    "mifgsm": {"steps": 10, "step_size": None, "decay": 1.0},
    "pgd": {"steps": 10, "step_size": None, "random_start": False},
    "pgd_targeted": {"steps": 10, "step_size": None, "random_start": False, "target": "next"},
    "pgd_l2": {"steps": 10, "step_size": None, "random_start": False},
    "cw_l2": {"steps": 300, "search_steps": 3, "initial_const": 0.01, "confidence": 0.0, "lr": 0.01},
    "gaussian": {"severity": None, "sigma": None},
    "uniform": {},
    "spsa": {"steps": 100, "samples": 512, "lr": 0.01, "delta": 0.01, "random_start": True},
    "nattack": {"steps": 100, "samples": 300, "lr": 0.008, "search_sigma": 0.1},
    # steps / queries: None runs the standard version's own counts (100 APGD and FAB iterations, 5000 Square
    # queries); a number cuts them (a rehearsal's counts), and the description says so. stages: None runs the
    # version's four (APGD-CE, APGD-T, FAB-T, Square); a subset leaves the others out, and the description names them.
    "autoattack": {"norm": "linf", "version": "standard", "steps": None, "queries": None, "stages": None},
}
ATTACK_TYPES = tuple(PARAMETERS)
# Whether eps is required, optional (C&W: a cap on the L2 norm; none = unbounded) or meaningless.
EPS_RULE = {t: "required" for t in ATTACK_TYPES} | {"cw_l2": "optional", "gaussian": "none"}
THREAT_MODELS = ("linf", "l2", "none")
_THREAT = {t: "linf" for t in ATTACK_TYPES} | {"pgd_l2": "l2", "cw_l2": "l2", "gaussian": "none"}
PIXEL_PARAMETERS = ("eps", "step_size", "sigma")  # 1/255 units in the config
BLACK_BOX = ("spsa", "nattack")
AUTOATTACK_VERSIONS = ("standard",)


def _fmt255(value: float) -> str:
    return f"{value * 255:.3g}/255"


@dataclass(frozen=True)
class AttackSpec:
    """One configured attack; eps, step_size and sigma in [0, 1] units.

    Build it with `from_config` (1/255 units) or directly, e.g. AttackSpec("pgd", eps=8 / 255). Unset
    parameters take the papers' settings for the type; parameters that do not apply to the type are errors.
    """

    type: str
    eps: float | None = None
    steps: int | None = None
    step_size: float | None = None
    random_start: bool | None = None
    decay: float | None = None
    target: str | int | None = None
    search_steps: int | None = None
    initial_const: float | None = None
    confidence: float | None = None
    lr: float | None = None
    samples: int | None = None
    delta: float | None = None
    search_sigma: float | None = None
    severity: int | None = None
    sigma: float | None = None
    norm: str | None = None
    version: str | None = None
    queries: int | None = None
    stages: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.type not in PARAMETERS:
            raise ValueError(f"unknown attack type {self.type!r}; choose one of {', '.join(ATTACK_TYPES)}")
        allowed = PARAMETERS[self.type]
        for f in fields(self):
            if f.name in ("type", "eps"):
                continue
            value = getattr(self, f.name)
            if f.name not in allowed:
                if value is not None:
                    raise ValueError(f"attack setting {f.name!r} does not apply to {self.type}; "
                                     f"its settings: {', '.join(['eps', *allowed]) or 'eps'}")
            elif value is None:
                object.__setattr__(self, f.name, allowed[f.name])
        self._check_eps()
        self._check_values()
        self._check_stages()

    def _check_eps(self):
        rule = EPS_RULE[self.type]
        if self.eps is None:
            if rule == "required":
                raise ValueError(f"attack type {self.type} needs eps")
            return
        if rule == "none":
            raise ValueError(f"eps does not apply to {self.type}; give severity (1..5) or sigma")
        if not self.eps >= 0:
            raise ValueError(f"attack eps must be non-negative, got {self.eps}")

    def _check_values(self):
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"{self.type} needs at least one step, got steps={self.steps}")
        if self.search_steps is not None and self.search_steps < 1:
            raise ValueError(f"C&W needs at least one binary-search step, got {self.search_steps}")
        if self.queries is not None and self.queries < 1:
            raise ValueError(f"AutoAttack's Square stage needs at least one query, got queries={self.queries}")
        if self.samples is not None and self.samples < 2:
            raise ValueError(f"{self.type} needs at least 2 samples per iteration, got {self.samples}")
        for name in ("step_size", "lr", "delta", "search_sigma", "initial_const"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"attack setting {name} must be positive, got {value}")
        for name in ("decay", "confidence"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"attack setting {name} must be non-negative, got {value}")
        if self.type == "pgd_targeted" and not (isinstance(self.target, int) and not isinstance(self.target, bool)
                                                 and self.target >= 0) and self.target not in TARGET_RULES:
            raise ValueError(f"target must be one of {', '.join(TARGET_RULES)} or a class index, got {self.target!r}")
        if self.type == "gaussian":
            if self.severity is None and self.sigma is None:
                raise ValueError("Gaussian noise needs exactly one of severity (1..5, CIFAR-10-C) or sigma")
            if self.severity is not None:
                level_sigma = severity_sigma(self.severity)
                # A sigma next to a severity is only accepted when it is the severity's own (a copy of a spec).
                if self.sigma is not None and abs(self.sigma - level_sigma) > 1e-12:
                    raise ValueError("Gaussian noise needs exactly one of severity (1..5, CIFAR-10-C) or sigma")
                object.__setattr__(self, "sigma", level_sigma)
            elif not self.sigma > 0:
                raise ValueError(f"Gaussian noise sigma must be positive, got {self.sigma}")
        if self.type == "autoattack":
            if self.norm not in NORMS:
                raise ValueError(f"AutoAttack norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
            if self.version not in AUTOATTACK_VERSIONS:
                raise ValueError(f"AutoAttack version must be one of {', '.join(AUTOATTACK_VERSIONS)}, got {self.version!r}")

    def _check_stages(self):
        """AutoAttack's stages: a non-empty subset of the standard four, in their order; all four is the default."""
        if self.stages is None:
            return
        stages = (self.stages,) if isinstance(self.stages, str) else tuple(self.stages)
        unknown = [s for s in stages if s not in STANDARD_ATTACKS]
        if unknown or not stages:
            raise ValueError(f"AutoAttack stages must be some of {', '.join(STANDARD_ATTACKS)}, got {list(stages)}")
        if list(stages) != [s for s in STANDARD_ATTACKS if s in stages]:
            raise ValueError(f"AutoAttack stages run in the standard order ({', '.join(STANDARD_ATTACKS)}), each "
                             f"once; got {list(stages)}")
        # all four is the standard ensemble: the same spec (and description) as leaving stages out
        object.__setattr__(self, "stages", None if stages == STANDARD_ATTACKS else stages)

    # ----------------------------------------------------------------------------------- construction
    @classmethod
    def from_config(cls, cfg: dict) -> "AttackSpec":
        """From a config entry whose eps/step_size/sigma are in 1/255 units."""
        if "type" not in cfg:
            raise ValueError("attack entry has no 'type'")
        kind = cfg["type"]
        if kind not in PARAMETERS:
            raise ValueError(f"unknown attack type {kind!r}; choose one of {', '.join(ATTACK_TYPES)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"unknown attack setting(s) {', '.join(unknown)} for {kind}")
        values = {}
        for key, value in cfg.items():
            if key == "type" or value is None:
                continue
            if key in PIXEL_PARAMETERS:
                if key == "eps" and value < 0:
                    raise ValueError(f"attack eps must be non-negative, got {value}")
                value = from_255(value)
            values[key] = value
        return cls(type=kind, **values)

    def to_config(self) -> dict:
        """Inverse of from_config: settings in config units (1/255 for eps, step_size, sigma)."""
        out = {"type": self.type}
        for key, value in asdict(self).items():
            if key == "type" or value is None or (key not in PARAMETERS[self.type] and key != "eps"):
                continue
            if self.type == "gaussian" and key == "sigma" and self.severity is not None:
                continue  # derived from the severity
            if key == "stages":
                value = list(value)
            out[key] = round(value * 255, 6) if key in PIXEL_PARAMETERS else value
        return out

    # ------------------------------------------------------------------------------------- bookkeeping
    @property
    def threat(self) -> str:
        """The ball the perturbation is confined to: 'linf', 'l2' or 'none' (unbounded noise)."""
        if self.type == "autoattack":
            return self.norm
        if self.type == "cw_l2" and self.eps is None:
            return "l2"  # minimum-norm attack without a cap: ball_eps is None
        return _THREAT[self.type]

    @property
    def ball_eps(self) -> float | None:
        """Radius of the threat ball in [0, 1] units (None: unbounded)."""
        return None if self.threat == "none" else self.eps

    @property
    def black_box(self) -> bool:
        return self.type in BLACK_BOX

    @property
    def resolved_step_size(self) -> float | None:
        if self.type not in ("mifgsm", "pgd", "pgd_targeted", "pgd_l2"):
            return None
        if self.step_size is not None:
            return self.step_size
        return self.eps / self.steps if self.type == "mifgsm" else self.eps / math.sqrt(self.steps)

    def settings(self) -> dict:
        """Flat record of what the attack does, for settings tables (pixel amounts in 1/255 units)."""
        step = self.resolved_step_size
        return {
            "attack_type": self.type,
            "threat": self.threat,
            "eps_255": None if self.ball_eps is None else round(self.ball_eps * 255, 6),
            "steps": self.steps,
            "step_size_255": None if step is None else round(step * 255, 6),
            "description": self.describe(),
        }

    def describe(self) -> str:
        t = self.type
        eps = None if self.eps is None else f"eps={_fmt255(self.eps)}"
        step = self.resolved_step_size
        rs = ", random start" if self.random_start else ""
        if t == "fgsm":
            return f"FGSM {eps}"
        if t == "step_ll":
            return f"Step-LL {eps}"
        if t == "mifgsm":
            return f"MI-FGSM {eps}, {self.steps} steps of {_fmt255(step)}, decay {self.decay:g}"
        if t == "pgd":
            return f"L-inf PGD {eps}, {self.steps} steps of {_fmt255(step)}{rs}"
        if t == "pgd_targeted":
            target = f"class {self.target}" if isinstance(self.target, int) else self.target.replace("_", "-") + " class"
            return f"targeted L-inf PGD (target: {target}) {eps}, {self.steps} steps of {_fmt255(step)}{rs}"
        if t == "pgd_l2":
            return f"L2 PGD {eps}, {self.steps} steps of {_fmt255(step)}{rs}"
        if t == "cw_l2":
            cap = "unbounded" if self.eps is None else f"L2 <= {_fmt255(self.eps)}"
            return (f"C&W-L2 ({cap}), c0={self.initial_const:g}, {self.search_steps} binary-search steps x "
                    f"{self.steps} Adam iterations (lr {self.lr:g}), confidence {self.confidence:g}")
        if t == "gaussian":
            level = f"severity {self.severity}, " if self.severity is not None else ""
            return f"Gaussian noise ({level}sigma={self.sigma:.3g} = {_fmt255(self.sigma)})"
        if t == "uniform":
            return f"uniform noise U(-{_fmt255(self.eps)}, {_fmt255(self.eps)})"
        if t == "spsa":
            return (f"SPSA {eps}, {self.steps} iterations, {self.samples} samples, Adam lr {self.lr:g}, "
                    f"delta {self.delta:g}{rs}")
        if t == "nattack":
            return (f"NAttack {eps}, {self.steps} iterations, {self.samples} samples, sigma {self.search_sigma:g}, "
                    f"lr {self.lr:g}, mu0=0")
        norm = {"linf": "L-inf", "l2": "L2"}[self.norm]
        counts = "".join([f", {self.steps} APGD/FAB iterations" if self.steps is not None else "",
                          f", {self.queries} Square queries" if self.queries is not None else ""])
        stages = self.stages or STANDARD_ATTACKS
        left_out = [a.upper() for a in STANDARD_ATTACKS if a not in stages]
        ran = ", ".join(a.upper() for a in stages) + (f"; {', '.join(left_out)} left out" if left_out else "")
        return f"AutoAttack {self.version} ({ran}) {norm} {eps}{counts}"
