"""Classifier architectures, named so that a checkpoint can rebuild them without pickling code.

Unlearning works on any ``nn.Module`` classifier whose last learnable layer is an
``nn.Linear``; these builders are the ones the project trains itself.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

from unsir.configs import ARCHITECTURE_KWARGS, ARGUMENTS_FROM_DATA, check_architecture_kwargs
from unsir.errors import UnlearningInputError
from unsir.training import in_eval_mode, inference_batch_size


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild an architecture: its name and its arguments."""

    arch: str
    num_classes: int
    in_channels: int
    kwargs: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> ModelSpec:
        return cls(raw["arch"], int(raw["num_classes"]), int(raw["in_channels"]), dict(raw.get("kwargs", {})))


class SmallCNN(nn.Module):
    """Two conv blocks with BatchNorm and a linear head: trains on 8x8 digits in seconds."""

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(8 * width, 128),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class AllCNN(nn.Module):
    """All-convolutional net (Springenberg et al. 2015) as used in the UNSIR paper, with BatchNorm."""

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 96):
        super().__init__()

        def block(cin: int, cout: int, stride: int = 1, kernel: int = 3) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2), nn.BatchNorm2d(cout), nn.ReLU()]

        wide = 2 * width
        self.features = nn.Sequential(
            *block(in_channels, width),
            *block(width, width),
            *block(width, width, stride=2),
            nn.Dropout(0.5),
            *block(width, wide),
            *block(wide, wide),
            *block(wide, wide, stride=2),
            nn.Dropout(0.5),
            *block(wide, wide),
            *block(wide, wide, kernel=1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(wide, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _resnet18_cifar(num_classes: int, in_channels: int = 3) -> nn.Module:
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=num_classes)
    # CIFAR stem: a 3x3 stride-1 conv and no max-pool keep spatial detail of 32x32 inputs.
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def _mobilenet_v2(num_classes: int, in_channels: int = 3) -> nn.Module:
    from torchvision.models import mobilenet_v2

    model = mobilenet_v2(weights=None, num_classes=num_classes)
    # Stride 1 in the stem for 32x32 inputs, as in CIFAR ports of MobileNetV2.
    first = model.features[0][0]
    model.features[0][0] = nn.Conv2d(in_channels, first.out_channels, 3, stride=1, padding=1, bias=False)
    return model


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": SmallCNN,
    "allcnn": AllCNN,
    "resnet18_cifar": _resnet18_cifar,
    "mobilenet_v2": _mobilenet_v2,
}


def _declared_arguments(builder: Callable[..., nn.Module]) -> dict[str, Any]:
    """The builder's named arguments other than those from the data, with their annotated types
    (``object`` where it has none: any value)."""
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {
        name: object if p.annotation is inspect.Parameter.empty else p.annotation
        for name, p in inspect.signature(builder, eval_str=True).parameters.items()
        if p.kind in named and name not in ARGUMENTS_FROM_DATA
    }


# params.yaml is validated against unsir.configs' declaration of the builders, without torch.
_BUILT = {name: _declared_arguments(builder) for name, builder in ARCHITECTURES.items()}
if _BUILT != ARCHITECTURE_KWARGS:
    raise ImportError(f"unsir.configs.ARCHITECTURE_KWARGS {ARCHITECTURE_KWARGS} != the builders' arguments {_BUILT}")


def build_model(spec: ModelSpec) -> nn.Module:
    """A freshly initialised model (seed torch beforehand for reproducible weights)."""
    try:
        builder = ARCHITECTURES[spec.arch]
    except KeyError:
        raise UnlearningInputError(
            f"unknown architecture {spec.arch!r}; expected one of {sorted(ARCHITECTURES)}"
        ) from None
    check_architecture_kwargs(spec.arch, spec.kwargs, _declared_arguments(builder))
    return builder(num_classes=spec.num_classes, in_channels=spec.in_channels, **spec.kwargs)


def classifier_head(model: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` of a classifier: its input is the penultimate representation."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UnlearningInputError(f"{type(model).__name__} has no nn.Linear layer to read features from")
    return linears[-1]


def layers_in_forward_order(model: nn.Module, sample: torch.Tensor) -> list[nn.Module]:
    """The layers of ``model`` (modules without children, and modules whose only children are a
    parametrization of their weights) in the order one forward pass of ``sample`` first calls
    them, in eval() mode; a layer the forward pass never calls is left out."""
    layers = [m for m in model.modules() if next(m.children(), None) is None or parametrize.is_parametrized(m)]
    inside_parametrizations = {
        inner for m in layers if parametrize.is_parametrized(m) for inner in m.modules() if inner is not m
    }
    order: dict[nn.Module, None] = {}
    handles = [
        layer.register_forward_pre_hook(lambda module, _inputs: order.setdefault(module, None))
        for layer in layers
        if layer not in inside_parametrizations
    ]
    try:
        with torch.inference_mode(), in_eval_mode(model):
            model(sample)
    finally:
        for handle in handles:
            handle.remove()
    return list(order)


def _keep_in_eval_mode(module: nn.Module, _inputs: tuple[torch.Tensor, ...]) -> None:
    # A pre-hook, so that the training loop's model.train() cannot undo it: a frozen BatchNorm
    # normalises with the original's running statistics and never updates them.
    module.training = False


@contextmanager
def modules_frozen(modules: list[nn.Module]) -> Iterator[None]:
    """For the block, ``modules`` stay exactly as they are whatever trains around them: their own
    parameters (not their children's) take no gradient, and each runs in eval() mode however the
    training loop sets the model's mode (BatchNorm statistics, dropout, a module's own ``if
    self.training``). On exit the ``requires_grad`` flags are as they were and the hooks gone."""
    flags = [(p, p.requires_grad) for module in modules for p in module.parameters(recurse=False)]
    handles = [module.register_forward_pre_hook(_keep_in_eval_mode) for module in modules]
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for parameter, was in flags:
            parameter.requires_grad_(was)


@contextmanager
def lower_layers_frozen(model: nn.Module, sample: torch.Tensor, fraction: float) -> Iterator[list[nn.Module]]:
    """For the block, the first ``fraction`` of ``model``'s weight layers (convolutions and linear
    layers, in forward order; ``sample`` is one input to find it) stay exactly as they are, and so
    does every layer the forward pass calls before the first one left to train
    (:func:`modules_frozen`). The classifier head always trains. Yields the frozen layers.

    Why (``unsir.recipes``): on a deep network, impair and repair on D_r_sub's few hundred samples
    move every layer, and the depthwise networks lost retain accuracy to it that no schedule or
    rate brought back; the head reset that does the forgetting needs only the top."""
    if fraction <= 0:
        yield []
        return
    head = classifier_head(model)
    order = layers_in_forward_order(model, sample)
    weight_layers = [m for m in order if isinstance(m, nn.modules.conv._ConvNd | nn.Linear) and m is not head]
    first_trained = weight_layers[int(len(weight_layers) * fraction)] if weight_layers else head
    cut = min(order.index(first_trained), order.index(head)) if head in order else order.index(first_trained)
    frozen = order[:cut]
    # A parametrized layer's weights live in its parametrization's modules: frozen with it.
    with modules_frozen([inner for layer in frozen for inner in layer.modules()]):
        yield frozen


def working_copy(model: nn.Module, device: torch.device) -> nn.Module:
    """A deep copy of ``model`` on ``device`` to unlearn or fine-tune; ``model`` is left untouched.

    torch's hook-based ``weight_norm`` and ``spectral_norm`` are refused first: they keep the
    weight they compute as a plain tensor attribute, which deepcopy refuses once a forward pass
    has recorded gradients (torch's "graph leaves" error), and which the next forward pass
    overwrites, so the head reset cannot write it. Their parametrized versions have neither
    problem; converting is two calls.
    """
    hook_based = {WeightNorm: "weight_norm", SpectralNorm: "spectral_norm"}
    for name, module in model.named_modules():
        for hook in module._forward_pre_hooks.values():
            norm = hook_based.get(type(hook))
            if norm is not None:
                where = f"module {name!r} ({type(module).__name__})" if name else "top module"
                raise UnlearningInputError(
                    f"{type(model).__name__}'s {where} uses the hook-based torch.nn.utils.{norm}, which cannot be "
                    f"copied (unlearning works on a copy) once a forward pass has recorded gradients; expected "
                    f"torch.nn.utils.parametrizations.{norm}: torch.nn.utils.remove_{norm}(module), then "
                    f"torch.nn.utils.parametrizations.{norm}(module)"
                )
    return copy.deepcopy(model).to(device)


@torch.inference_mode()
def penultimate_features(
    model: nn.Module, images: torch.Tensor, *, device: torch.device, batch_size: int | None = None
) -> torch.Tensor:
    """Inputs of the classifier head, captured with a forward hook (any architecture), in
    batches of ``batch_size`` (default: ``unsir.training.inference_batch_size``)."""
    return head_features(model, images, device=device, batch_size=batch_size)[0]


@torch.inference_mode()
def head_features(
    model: nn.Module, images: torch.Tensor, *, device: torch.device, batch_size: int | None = None
) -> tuple[torch.Tensor, bool]:
    """:func:`penultimate_features`, and whether the model's output was its head's output on every
    sample: False when its forward pass changes the logits after the head (a temperature, a
    log_softmax, a logit adjustment), so that the head alone is not the model's classifier."""
    batch_size = batch_size or inference_batch_size(device)
    captured: list[torch.Tensor] = []
    head_outputs: list[torch.Tensor] = []

    def capture(_module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        captured.append(inputs[0].flatten(1).cpu())
        head_outputs.append(output)

    hook = classifier_head(model).register_forward_hook(capture)
    head_makes_the_output = True
    try:
        with in_eval_mode(model):
            for start in range(0, len(images), batch_size):
                output = model(images[start : start + batch_size].to(device))
                head_makes_the_output = head_makes_the_output and torch.equal(output, head_outputs.pop())
    finally:
        hook.remove()
    return torch.cat(captured), head_makes_the_output


def check_classifier(
    model: nn.Module, samples: dict[str, torch.Tensor], num_classes: int, *, device: torch.device
) -> None:
    """Refuse, before any compute, a model that cannot classify ``samples`` (named sets of
    images) into ``num_classes`` classes: images of another dtype than its parameters, or of a
    shape it cannot take, or outputs that are not ``(N, num_classes)`` logits. ``model`` must
    already be on ``device``; one sample goes through it, in eval() mode."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    for name, images in samples.items():
        if dtypes and images.dtype not in dtypes:
            raise UnlearningInputError(
                f"{name}: images are {images.dtype}, the model's parameters {sorted(map(str, dtypes))}; "
                "expected the same dtype (convert the images with .to(dtype) or the model)"
            )
    name, images = next(iter(samples.items()))
    try:
        with in_eval_mode(model), torch.inference_mode():
            out = model(images[:1].to(device))
    except RuntimeError as err:
        raise UnlearningInputError(
            f"the model cannot take {name} samples of shape {tuple(images.shape[1:])}: {str(err).splitlines()[0]}"
        ) from err
    if not isinstance(out, torch.Tensor):
        # Training, inference and the measures take the forward pass's output as the logits.
        raise UnlearningInputError(
            f"the model's forward pass returns a {type(out).__name__}; expected a tensor of (N, {num_classes}) "
            "logits (wrap a model that returns a tuple or dict, e.g. HuggingFace's, in a module whose forward "
            "returns the logits alone)"
        )
    if out.ndim != 2 or out.shape[1] != num_classes:
        raise UnlearningInputError(
            f"the model outputs shape {tuple(out.shape)} per batch; expected (N, {num_classes}) logits"
        )


def check_classifier_head(
    model: nn.Module, images: torch.Tensor, num_classes: int, *, device: torch.device
) -> nn.Linear:
    """:func:`classifier_head` (the last ``nn.Linear`` the model *registers*) must be the last one
    its forward pass *runs*, with one output per class: a model that defines its head before a
    hidden ``nn.Linear``, or makes its logits without one (``F.linear`` on a parameter, a cosine
    head), would otherwise have a hidden layer's rows re-drawn and refitted as if they were
    classes. One sample of ``images`` goes through ``model`` (already on ``device``), in eval()
    mode."""
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        # Named so that the user sees which layer makes the logits instead (SqueezeNet: a 1x1 conv).
        weighted = [
            f"{name!r} ({type(m).__name__})"
            for name, m in model.named_modules()
            if next(m.parameters(recurse=False), None) is not None
        ]
        last = f", its last layer with weights is {weighted[-1]}" if weighted else ""
        raise UnlearningInputError(f"{type(model).__name__} has no nn.Linear layer{last}; {HEAD_FREE_RECIPE}")
    head = classifier_head(model)
    ran: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda module, _inputs, _out: ran.append(module))
        for m in model.modules()
        if isinstance(m, nn.Linear)
    ]
    try:
        with in_eval_mode(model), torch.inference_mode():
            model(images[:1].to(device))
    finally:
        for hook in hooks:
            hook.remove()
    names = {m: name for name, m in model.named_modules()}
    if not ran or ran[-1] is not head:
        last = f"{names[ran[-1]]!r}" if ran else "none"
        raise UnlearningInputError(
            f"{type(model).__name__}'s classifier head is taken to be its last registered nn.Linear, "
            f"{names[head]!r} ({head.in_features} -> {head.out_features}), but the last one its forward pass "
            f"runs is {last}; define the head after every other layer in __init__"
        )
    if head.out_features != num_classes:
        raise UnlearningInputError(
            f"{type(model).__name__}'s classifier head is taken to be its last nn.Linear, {names[head]!r} "
            f"({head.in_features} -> {head.out_features}), but it has {head.out_features} outputs, not one per "
            f"class ({num_classes}): the logits are made by something else; {HEAD_FREE_RECIPE}"
        )
    _refuse_a_tied_head(model, head, names)
    return head


def _refuse_a_tied_head(model: nn.Module, head: nn.Linear, names: dict[nn.Module, str]) -> None:
    """A head whose weight or bias is the same Parameter as another module's (a class embedding,
    a language model's tied input embedding) is refused, not handled: the other module reads the
    same rows with a meaning of its own (a class's conditioning, a token), so re-drawing the
    forget classes' rows would change it silently, and the head round, which refits the head on
    features computed once, would train it without running it. Whether the tie may be broken is
    the user's choice; the paper's method trains the tied weight through the forward pass."""
    own = {id(p): name for name, p in head.named_parameters()}  # a parametrization's originals too
    inside_head = set(head.modules())
    for module_name, module in model.named_modules():
        if module in inside_head:
            continue
        for name, parameter in module.named_parameters(recurse=False):
            if id(parameter) in own:
                head_name, shared = names[head], own[id(parameter)]
                other = f"{module_name}.{name}" if module_name else name
                raise UnlearningInputError(
                    f"{type(model).__name__}'s classifier head {head_name!r} shares its {shared} with {other!r} "
                    f"(the same Parameter): the recipe's head reset would re-draw the forget classes' rows of "
                    f"{other!r} too, and its head round refit them; untie it (model.{head_name}.{shared} = "
                    f"nn.Parameter(model.{head_name}.{shared}.detach().clone())) if the two may differ, or "
                    f"{WITHOUT_HEAD_STEPS}"
                )


# What runs on a model whose head the recipe can neither reset nor refit.
WITHOUT_HEAD_STEPS = (
    "run without the head reset and head round (unsir_config_for(..., with_noise=True), the paper's method, or "
    "reset_forget_rows=False and head_round=None): UNSIR then touches no head"
)
# What a model whose logits do not come out of an nn.Linear head can still run.
HEAD_FREE_RECIPE = (
    f"the recipe's head reset and head round need an nn.Linear head with one output per class; {WITHOUT_HEAD_STEPS}"
)
