"""The AIM projector: the only trained part, mapping demo hidden states to fused virtual tokens.

Projectors are pluggable by name through `PROJECTORS`. Each saves itself alone (PEFT-style): a JSON config naming
the backbone it belongs to plus a safetensors file, and refuses to load onto another backbone.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from aim_icl.core.hub_files import HubSource, fetch_file, hub_source
from aim_icl.core.projector_config import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    BackboneSignature,
    ProjectorConfig,
    check_projector_config,
    load_projector_config,
)
from aim_icl.errors import AIMError
from aim_icl.registry import Registry

PROJECTORS: Registry[type[nn.Module]] = Registry("projector")


@PROJECTORS.register("residual")
class ResidualProjector(nn.Module):
    """f(h) = ê(h) + g(h): a ridge-fitted copy of the demo's own token embeddings plus a zero-initialised MLP.

    With `g` at zero, AIM reproduces text-only demonstrations; training `g` adds what the image says on top.
    `ê` is fitted in closed form (`fit_copy`) and stays trainable.
    """

    def __init__(self, hidden_size: int, embed_size: int, mlp_ratio: float = 1.0):
        super().__init__()
        width = max(1, int(hidden_size * mlp_ratio))
        self.mlp_ratio = mlp_ratio
        self.copy = nn.Linear(hidden_size, embed_size)
        self.mlp = nn.Sequential(
            nn.LayerNorm(hidden_size), nn.Linear(hidden_size, width), nn.GELU(), nn.Linear(width, embed_size)
        )
        for p in (self.copy.weight, self.copy.bias, self.mlp[-1].weight, self.mlp[-1].bias):
            nn.init.zeros_(p)
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (..., hidden) -> (..., embed)
        return self.copy(hidden) + self.mlp(hidden)

    def options(self) -> dict:
        """The constructor options a saved config records (besides the widths)."""
        return {"mlp_ratio": self.mlp_ratio}

    @torch.no_grad()
    def fit_copy(self, hidden: torch.Tensor, embeds: torch.Tensor, ridge: float = 1e-2) -> None:
        """Fit ê by ridge regression so that ê(hidden_i) ≈ embeds_i (rows are token positions)."""
        weight, bias = ridge_fit(hidden, embeds, ridge)
        self.copy.weight.copy_(weight)
        self.copy.bias.copy_(bias)
        self.fitted.fill_(True)


@PROJECTORS.register("gated")
class GatedProjector(nn.Module):
    """f(h, e) = e + tanh(α) ⊙ g(h): the demo's own token embeddings e, plus a gated MLP of its hidden states.

    The gate α starts at zero, so an untrained projector gives exactly `text` mode (nothing to fit first), and
    training adds what the image says on top of the words, channel by channel. Unlike the ridge copy of
    `residual`, the words come through exactly however many demos the prompt holds. It reads the text's
    embeddings (`reads_text`), which `AIM` passes from the demo's token ids.
    """

    reads_text = True

    def __init__(self, hidden_size: int, embed_size: int, mlp_ratio: float = 1.0):
        super().__init__()
        width = max(1, int(hidden_size * mlp_ratio))
        self.mlp_ratio = mlp_ratio
        self.mlp = nn.Sequential(
            nn.LayerNorm(hidden_size), nn.Linear(hidden_size, width), nn.GELU(), nn.Linear(width, embed_size)
        )
        self.gate = nn.Parameter(torch.zeros(embed_size))  # zero: g's contribution starts at nothing
        self.register_buffer("fitted", torch.ones((), dtype=torch.bool))

    def forward(self, hidden: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:  # (..., embed)
        return text_embeds + torch.tanh(self.gate) * self.mlp(hidden)

    def options(self) -> dict:
        return {"mlp_ratio": self.mlp_ratio}


@PROJECTORS.register("linear")
class LinearProjector(nn.Module):
    """The paper's plain `Linear(d, d)`, identity-initialised where the widths match."""

    def __init__(self, hidden_size: int, embed_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, embed_size)
        nn.init.zeros_(self.linear.bias)
        if hidden_size == embed_size:
            nn.init.eye_(self.linear.weight)
        self.register_buffer("fitted", torch.ones((), dtype=torch.bool))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden)


def ridge_fit(x: torch.Tensor, y: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form ridge regression y ≈ x Wᵀ + b, in float64 for stability.

    `ridge` is relative to the mean eigenvalue of the centred Gram matrix, so one value suits any width or scale.
    """
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise AIMError(f"ridge_fit needs matching 2-D rows, got {tuple(x.shape)} and {tuple(y.shape)}")
    if len(x) < 2:
        raise AIMError("fitting the projector's copy map needs at least 2 token positions; pass more demos")
    x, y = x.double(), y.double()
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = x - x_mean, y - y_mean
    gram = xc.T @ xc  # (d, d)
    lam = ridge * gram.diagonal().mean().clamp_min(1e-12)
    eye = torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    weight = torch.linalg.solve(gram + lam * eye, xc.T @ yc).T  # (e, d)
    bias = y_mean - weight @ x_mean
    return weight.float(), bias.float()


def projector_config(projector: nn.Module, backbone: BackboneSignature, layer: int = -1) -> ProjectorConfig:
    """The config a projector module saves with: the name its class is registered under and its own options
    (`options()`, where the class has one). An unregistered class keeps its class name: saving it is refused."""
    name = next(
        (n for n in PROJECTORS.names() if PROJECTORS.get(n) is type(projector)), type(projector).__name__
    )
    options = projector.options() if hasattr(projector, "options") else {}
    return ProjectorConfig(name, backbone, options, layer=layer)


def build_projector(config: ProjectorConfig) -> nn.Module:
    cls = PROJECTORS.get(config.name)
    return cls(config.backbone.hidden_size, config.backbone.embed_size, **config.options)


def save_projector(projector: nn.Module, config: ProjectorConfig, directory: str | Path) -> Path:
    if config.name not in PROJECTORS:
        raise AIMError(
            f"projector {config.name!r} is not registered, so a saved one could not be loaded; register its class "
            "with aim_icl.core.projector.PROJECTORS.register(name)"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in projector.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_NAME))
    (directory / CONFIG_NAME).write_text(json.dumps(asdict(config), indent=2) + "\n")
    return directory


def load_projector(
    source: str | Path | HubSource, expected: BackboneSignature, revision: str | None = None
) -> tuple[nn.Module, ProjectorConfig]:
    """Load a saved projector from a local directory or a Hub repo (`org/name`, `org/name@revision`,
    `revision=`, or a `HubSource` carrying token and cache options), refusing one trained for another backbone.

    From the Hub the config is fetched and checked first, so a projector for another backbone is refused before
    its weights are downloaded or read; the weights then come from the same commit as the config.
    """
    hub = hub_source(source, revision)
    directory = Path(source) if hub is None else fetch_file(hub, CONFIG_NAME).parent
    config = load_projector_config(directory)
    check_projector_config(config, expected, f"in {directory}" if hub is None else f"from {hub.label}")
    projector = build_projector(config)
    weights = directory / WEIGHTS_NAME
    if hub is not None:  # the snapshot folder is named after the commit the config came from
        weights = fetch_file(hub.at(directory.name), WEIGHTS_NAME)
    if not weights.is_file():
        raise AIMError(f"no {WEIGHTS_NAME} in {directory}: the projector save is incomplete")
    try:
        projector.load_state_dict(load_file(str(weights)))
    except (SafetensorError, OSError, RuntimeError) as err:  # corrupt file; wrong or missing tensors
        lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
        reason = lines[1] if len(lines) > 1 else lines[0]  # torch puts the cause on its second line
        raise AIMError(f"cannot load {weights}: {reason}; re-save or re-train the projector") from None
    return projector, config
