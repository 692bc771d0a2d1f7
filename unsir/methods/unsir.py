"""UNSIR: error-maximising noise, impair, repair (Tarun et al., TNNLS 2023), verified.

One *round* is the paper's method: noise learned against the current model, one impair pass,
one repair pass. When the task carries a validation split, UNSIR checks after each round
whether the forget classes are forgotten there (``unsir.verification``) and, when they are not,
runs another round within ``verification.max_rounds``. Round r copies every noise sample
``noise_copies * r`` times: a class that survived a round needs a larger share of noise in the
impair set, and repeating the first round unchanged was measured to relapse as often as it
helped (``benchmarks/README.md``). Every round reads D_r_sub and noise only: never a
forget-class training sample. The validation split is only measured, never trained on.

Forgetting done, the validation split also judges what was kept: when its retain accuracy sits
more than ``verification.max_retain_drop`` below the parent's, up to
``verification.max_recovery_epochs`` more repair epochs run, and the epoch with the best
validation retain accuracy among those that still forget is kept (measured on the deep
networks, which lose retain accuracy to the high-rate steps; ``benchmarks/README.md``).

This class is the one way to run UNSIR: the flow, the DVC stage and the benchmark all call it,
so the same configuration, parent model and seed give the same weights everywhere.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
from torch import nn
from torch.nn.utils import parametrize

from unsir.configs import OptimConfig, UNSIRConfig, VerificationConfig
from unsir.errors import UnlearningInputError
from unsir.methods.base import (
    UnlearningMethod,
    UnlearningResult,
    UnlearningTask,
    prepare,
    register,
    timed,
)
from unsir.models import (
    check_classifier_head,
    classifier_head,
    head_features,
    lower_layers_frozen,
    modules_frozen,
)
from unsir.noise import build_impair_set, learn_error_maximizing_noise
from unsir.training import fit, resolve_device
from unsir.verification import ForgettingCheck, check_forgetting


def impair(
    model: nn.Module,
    noise: dict[int, torch.Tensor],
    retain_images: torch.Tensor,
    retain_labels: torch.Tensor,
    config: UNSIRConfig,
    *,
    device: torch.device,
    generator: torch.Generator,
) -> nn.Module:
    """Train on D_r_sub plus labelled noise at a high learning rate: damages the forget classes."""
    x, y = build_impair_set(noise, retain_images.to(device), retain_labels.to(device), copies=config.noise_copies)
    return fit(model, x, y, config.impair, device=device, generator=generator, description="impair")


def repair(
    model: nn.Module,
    retain_images: torch.Tensor,
    retain_labels: torch.Tensor,
    config: UNSIRConfig,
    *,
    device: torch.device,
    generator: torch.Generator,
) -> nn.Module:
    """Train on D_r_sub alone: restores the retain classes the impair step damaged."""
    return fit(
        model, retain_images, retain_labels, config.repair, device=device, generator=generator, description="repair"
    )


def reset_head_rows(model: nn.Module, classes, *, generator: torch.Generator) -> None:
    """Re-draw the classifier head's rows of ``classes`` as ``nn.Linear`` initialises them."""
    head = classifier_head(model)
    bound = 1.0 / head.in_features**0.5  # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    rows = torch.as_tensor(sorted(classes), dtype=torch.long)
    with torch.no_grad():
        fresh = (torch.rand((len(rows), head.in_features), generator=generator) * 2 - 1) * bound
        if parametrize.is_parametrized(head, "weight"):
            # weight_norm, spectral_norm: the weight is computed afresh on every read, so an
            # in-place write is lost; assigning it whole goes through the parametrization's
            # right_inverse into the tensors it is computed from.
            weight = head.weight.clone()
            weight[rows.to(weight.device)] = fresh.to(weight)
            head.weight = weight
        else:
            head.weight[rows.to(head.weight.device)] = fresh.to(head.weight)
        if head.bias is not None:
            fresh_bias = (torch.rand(len(rows), generator=generator) * 2 - 1) * bound
            head.bias[rows.to(head.bias.device)] = fresh_bias.to(head.bias)


def refit_head(
    model: nn.Module,
    task: UnlearningTask,
    settings: OptimConfig,
    *,
    device: torch.device,
    generator: torch.Generator,
) -> nn.Module:
    """Refit the classifier head alone on D_r_sub, the rest frozen.

    The features are computed once, in eval() mode (as the model computes them when it is
    used), so the step costs less than one epoch over D_r_sub. The forget classes' rows
    are refitted as the last round left them: re-drawn again, they came back above the
    confidence bound more often than not (benchmarks/tuning/head_round.py).

    A model whose forward pass changes the head's logits (a calibrated model's temperature)
    would have its head fitted to logits it never outputs: its head is trained through the
    model's own forward pass instead, every other parameter frozen and the model in eval() mode,
    at the cost of one forward pass over D_r_sub per epoch.
    """
    head = classifier_head(model)
    features, head_makes_the_output = head_features(model, task.retain_images, device=device)
    if head_makes_the_output:
        # A copy outside inference mode: the head's backward pass saves its input.
        fit(
            head,
            features.clone(),
            task.retain_labels,
            settings,
            device=device,
            generator=generator,
            description="head round",
        )
        return model
    inside_head = set(head.modules())
    with modules_frozen([m for m in model.modules() if m not in inside_head]):
        fit(
            model,
            task.retain_images,
            task.retain_labels,
            settings,
            device=device,
            generator=generator,
            description="head round",
        )
    return model


def failed_on_confidence_alone(record: dict[str, float], settings: VerificationConfig) -> bool:
    """A round's validation check failed only because some forget-class sample gave the forget
    classes too much probability: none was classified as its class (what a head round is for).
    False for a round that was not verified."""
    return record.get("verified") == 0.0 and record["val_forget_acc"] <= settings.max_forget_acc


@register
class UNSIR(UnlearningMethod):
    name = "unsir"
    Config = UNSIRConfig
    uses_noise = True

    def unlearn(self, model, task: UnlearningTask, *, device, generator) -> UnlearningResult:
        # Dropout (AllCNN, MobileNetV2) draws from torch's global generator, not from ours: seed
        # it from ours inside a forked RNG state, so the same seed gives the same model in every
        # process (the flow, the DVC stage, the benchmark) and the caller's state is untouched.
        device = resolve_device(device)  # "cuda" as text too, as torch takes it
        if not isinstance(generator, torch.Generator):
            raise UnlearningInputError(
                f"generator must be a torch.Generator (e.g. torch.Generator().manual_seed(0)), got {generator!r}: "
                "UNSIR seeds dropout from it, so the same seed gives the same model"
            )
        cuda: list[int] = []
        if device.type == "cuda":
            cuda = [device.index if device.index is not None else torch.cuda.current_device()]
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(generator.initial_seed())
            return self._unlearn(model, task, device=device, generator=generator)

    def _unlearn(self, model, task: UnlearningTask, *, device, generator) -> UnlearningResult:
        working = prepare(model, task, device)
        if self.config.reset_forget_rows or self.config.head_round is not None:
            check_classifier_head(working, task.retain_images, task.num_classes, device=device)
        sample = task.retain_images[:1].to(device)
        with lower_layers_frozen(working, sample, self.config.frozen_lower_layers):
            return self._unlearn_working_copy(working, task, device=device, generator=generator)

    def _unlearn_working_copy(self, working, task: UnlearningTask, *, device, generator) -> UnlearningResult:
        verify = task.validation_images is not None
        # The parent's validation retain accuracy: what the recovery epochs aim back at.
        parent_retain_acc = self._validation_check(working, task, device=device).retain_acc if verify else None
        if self.config.reset_forget_rows:
            reset_head_rows(working, task.forget_classes, generator=generator)
        head_trains = (
            any(p.requires_grad for p in classifier_head(working).parameters()) if self.config.head_round else False
        )
        max_rounds = self.config.verification.max_rounds if verify else 1
        timings: dict[str, float] = {}
        rounds: list[dict[str, float]] = []
        noise: dict[int, torch.Tensor] = {}
        verified: bool | None = None
        for number in range(1, max_rounds + 1):
            config = self.config.for_round(number)
            record: dict[str, float] = {"round": number, "noise_copies": config.noise_copies}
            # Forgotten on accuracy, not yet on confidence: the head alone holds what is left
            # often enough that refitting it, at a fraction of a round's cost, is tried first;
            # never twice in a row. A head its user froze cannot be refitted: a full round then.
            if (
                config.head_round is not None
                and head_trains
                and rounds
                and "head_round" not in rounds[-1]
                and failed_on_confidence_alone(rounds[-1], config.verification)
            ):
                record["head_round"] = 1.0
                with timed(record, "head_s", device):
                    refit_head(working, task, config.head_round, device=device, generator=generator)
            else:
                noise = self._full_round(working, task, config, record, noise, device=device, generator=generator)
            for key in ("noise_s", "impair_s", "repair_s", "head_s"):
                if key in record:
                    timings[key] = timings.get(key, 0.0) + record[key]
            if verify:
                verified = self._verify(working, task, record, timings, device=device)
            rounds.append(record)
            if verified:
                break
        if self.config.polish is not None:
            verified = self._polish(working, task, rounds[-1], timings, verified, device=device, generator=generator)
        if verified and parent_retain_acc is not None:
            self._recover_retain(
                working, task, rounds[-1], timings, parent_retain_acc, device=device, generator=generator
            )
        return UnlearningResult(working.eval(), timings, noise or None, rounds=rounds, verified=verified)

    def _full_round(
        self, working, task: UnlearningTask, config: UNSIRConfig, record: dict, noise: dict, *, device, generator
    ) -> dict[int, torch.Tensor]:
        """The paper's round: noise learned against the current model, impair, repair. Returns the
        noise it impaired with (``noise``, the last round's, when this round learns none)."""
        if self.uses_noise and config.noise_copies > 0:  # no copies: the noise would go unused
            with timed(record, "noise_s", device):
                noise = learn_error_maximizing_noise(
                    working, task.forget_classes, task.input_shape, config.noise, device=device, generator=generator
                )
        with timed(record, "impair_s", device):
            impair(working, noise, task.retain_images, task.retain_labels, config, device=device, generator=generator)
        with timed(record, "repair_s", device):
            repair(working, task.retain_images, task.retain_labels, config, device=device, generator=generator)
        return noise

    @staticmethod
    def _validation_check(working, task: UnlearningTask, *, device) -> ForgettingCheck:
        # unlearn verifies only when the task has a validation split (both halves, by its checks).
        assert task.validation_images is not None and task.validation_labels is not None
        return check_forgetting(
            working, task.validation_images, task.validation_labels, task.forget_classes, device=device
        )

    def _verify(self, working, task: UnlearningTask, record: dict, timings: dict, *, device) -> bool:
        """Measure forgetting on the validation split into ``record``; True when it passes."""
        with timed(timings, "verify_s", device):
            check = self._validation_check(working, task, device=device)
        record.update(check.as_dict())
        record["verified"] = float(check.passes(self.config.verification))
        return bool(record["verified"])

    def _recover_retain(
        self, working, task: UnlearningTask, record: dict, timings: dict, parent_retain_acc: float, *, device, generator
    ) -> None:
        """Repair epochs while validation retain accuracy sits too far below the parent's.

        Runs only on a model that forgets; keeps the epoch with the best validation retain
        accuracy among those that still forget (the last round's model when none is better), so
        recovery never brings a forget class back and never ends worse than it began.
        """
        settings = self.config.verification
        target = parent_retain_acc - settings.max_retain_drop
        record["parent_val_retain_acc"] = parent_retain_acc
        record["recovery_epochs"] = record["recovery_kept_epoch"] = 0.0
        best_acc = record["val_retain_acc_before_recovery"] = record["val_retain_acc"]
        if settings.max_recovery_epochs == 0 or best_acc >= target:
            return
        best_state, best_record = copy.deepcopy(working.state_dict()), dict(record)
        one_epoch = replace(self.config.repair, epochs=1)
        for epoch in range(1, settings.max_recovery_epochs + 1):
            with timed(timings, "recovery_s", device):
                fit(
                    working,
                    task.retain_images,
                    task.retain_labels,
                    one_epoch,
                    device=device,
                    generator=generator,
                    description="recovery",
                )
            with timed(timings, "verify_s", device):
                check = self._validation_check(working, task, device=device)
            if check.passes(settings) and check.retain_acc > best_acc:
                best_acc, best_state = check.retain_acc, copy.deepcopy(working.state_dict())
                best_record = {**record, **check.as_dict(), "recovery_kept_epoch": float(epoch)}
            if best_acc >= target:
                break
        working.load_state_dict(best_state)
        record.clear()
        record.update(best_record, recovery_epochs=float(epoch))

    def _polish(
        self, working, task: UnlearningTask, record: dict, timings: dict, verified: bool | None, *, device, generator
    ) -> bool | None:
        """The low-rate repair after the last round; undone if it brought a forget class back."""
        if verified and "head_round" in record:
            # A head round that verified ends the run as the polish would: it is itself a
            # low-rate repair (of the head alone), and without the polish such a run costs less
            # than a one-round run of a single class (benchmarks/README.md).
            return verified
        before = copy.deepcopy(working.state_dict()) if verified else None
        with timed(timings, "polish_s", device):
            fit(
                working,
                task.retain_images,
                task.retain_labels,
                self.config.polish,
                device=device,
                generator=generator,
                description="polish",
            )
        record["polished"] = 1.0
        if task.validation_images is None:
            return verified
        last_round = dict(record)
        passed = self._verify(working, task, record, timings, device=device)
        if before is not None and not passed:
            # The polish brought a forget class back: keep the last round's model and record.
            working.load_state_dict(before)
            record.clear()
            record.update(last_round, polished=0.0)
            return verified
        return passed


@register
class NoiseFreeControl(UNSIR):
    """UNSIR's impair and repair on D_r_sub with no noise: isolates what the noise contributes."""

    name = "noise_free"
    uses_noise = False
