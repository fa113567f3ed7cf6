"""The validation layer (robustjax.validation) at the entry points that are not attacks,
corruptions or certifiers (those are in test_entry.py): every metric family, the defenses,
training and the report's data check. Each bad input gives a robustjax ``InputError`` whose
message names the problem; a model that returns NaN for some inputs is reported with their
indices; the checks cost nothing under jit."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from robustjax import metrics, train, validation
from robustjax.defenses import detectors, evaluation, transforms
from robustjax.report import inputs
from robustjax.train.certified import train_certified
from robustjax.types import Model, ModelSpec


class TinyCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3))(x))
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


_MODULE = TinyCNN()


def tiny_apply(params, x):
    return _MODULE.apply(params, x)


def tiny_embed(params, x):
    return x.reshape(x.shape[0], -1)[:, :6]


PARAMS = _MODULE.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
MODEL = Model(tiny_apply, PARAMS, ModelSpec("tiny", (8, 8, 3), 10))


def data(b=4, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return (jax.random.uniform(k1, (b, 8, 8, 3)),
            jax.random.randint(k2, (b,), 0, 10).astype(jnp.int32))


# ------------------------------------------------------------- metric families on logits
# Each takes (logits [b, 10], y [b]); two-logit metrics compare with a scaled copy.

LOGIT_METRICS = {
    "task.topk_correct": lambda lg, y: metrics.topk_correct(lg, y, 5),
    "task.TaskStats": lambda lg, y: metrics.TaskStats.from_batch(lg, y).compute(),
    "adversarial": lambda lg, y: metrics.adversarial_metrics(lg, y, logits_clean=lg * 0.5),
    "adversarial.attack_success": lambda lg, y: metrics.attack_success(lg, y),
    "defense": lambda lg, y: metrics.defense_metrics(lg * 0.5, lg, y),
    "equations.fooling_rate": lambda lg, y: metrics.fooling_rate(lg * 0.5, lg, y),
    "equations.retention_rate": lambda lg, y: metrics.retention_rate(lg * 0.5, lg, y),
    "equations.robustness_indicator": lambda lg, y: metrics.robustness_indicator(
        lg * 0.5, lg[None], y, require_correct=True),
}


def _logits(b=4):
    x, y = data(b)
    return tiny_apply(PARAMS, x), y


LOGIT_CASES = {
    # name: (transform (logits, y) -> (logits, y), error class, message pattern)
    "nan logits": (lambda lg, y: (lg.at[2, 3].set(jnp.nan), y), validation.ModelOutputError,
                   r"1 input\(s\), at indices \[2\]"),
    "labels out of range": (lambda lg, y: (lg, y + 10), validation.InputError, r"\[0, 10\)"),
    "empty batch": (lambda lg, y: (lg[:0], y[:0]), validation.InputError, "empty"),
    "not [batch, classes]": (lambda lg, y: (lg[:, None, :], y), validation.InputError,
                             r"\[batch, classes\]"),
    "float labels": (lambda lg, y: (lg, y.astype(jnp.float32)), validation.InputTypeError,
                     "integer class indices"),
    "length mismatch": (lambda lg, y: (lg, y[:3]), validation.InputError, "3 labels but"),
}


@pytest.mark.parametrize("case", sorted(LOGIT_CASES))
@pytest.mark.parametrize("family", sorted(LOGIT_METRICS))
def test_every_logit_metric_rejects_bad_input_clearly(family, case):
    transform, error, pattern = LOGIT_CASES[case]
    logits, y = transform(*_logits())
    with pytest.raises(error, match=pattern):
        LOGIT_METRICS[family](logits, y)


def test_logit_metrics_accept_good_input_and_jit_without_callbacks():
    logits, y = _logits()
    for family, fn in LOGIT_METRICS.items():
        if family == "adversarial":  # ACAC/ACTC/NTE are NaN by definition without a success
            continue
        out = jax.tree_util.tree_leaves(fn(logits, y))
        assert all(np.all(np.isfinite(np.asarray(v, np.float32))) for v in out), family
    # under jit the shapes are checked, the values cost nothing: no host callback
    lowered = jax.jit(lambda lg, y: metrics.topk_correct(lg, y, 5)).lower(logits, y).as_text()
    assert "callback" not in lowered
    with pytest.raises(validation.InputError, match="3 labels but"):
        jax.jit(lambda lg, y: metrics.topk_correct(lg, y))(logits, y[:3])


def test_detection_scores_say_where_the_nan_is():
    clean = np.array([0.1, 0.2, np.nan, 0.4])
    with pytest.raises(validation.InputError, match=r"indices \[2\]"):
        metrics.auroc(clean, np.ones(3))
    with pytest.raises(validation.InputError, match="empty"):
        metrics.tpr_at_fpr(np.ones(3), np.ones(0))
    with pytest.raises(validation.InputError, match="fpr"):
        metrics.threshold_at_fpr(np.ones(3), 1.5)


def test_robustness_curve_rejects_nan_budgets():
    with pytest.raises(validation.InputError, match=r"indices \[1\]"):
        metrics.robustness_curve(np.array([0.1, np.nan, np.inf]), [0.1, 0.2])


# ------------------------------------------- image metric families, defenses and training

EBD1 = metrics.EBD1Config(num_directions=2, num_steps=2)
EBD2 = metrics.EBD2Config(max_steps=2)
SGD = optax.sgd(0.01)


def _fit(x, y):
    return train.fit(tiny_apply, PARAMS, SGD, x, y, epochs=1, batch_size=2,
                     key=jax.random.key(0))


def _fit_mahalanobis(x, y):
    return detectors.fit_mahalanobis(tiny_embed, PARAMS, x, y)


# name: (fn(x, y), uses the model (NCHW / channel cases apply), takes labels)
IMAGE_ENTRIES = {
    "consistency.eni": (lambda x, y: metrics.eni(tiny_apply, PARAMS, x, y,
                                                 jnp.clip(x + 0.01, 0, 1)), True, True),
    "boundary.ebd1": (lambda x, y: metrics.ebd1(tiny_apply, PARAMS, x, y, jax.random.key(0),
                                                EBD1), True, True),
    "boundary.ebd2": (lambda x, y: metrics.ebd2(tiny_apply, PARAMS, x, y, None, EBD2), True,
                      True),
    "imperceptibility.lp_distortions": (lambda x, y: metrics.lp_distortions(x, x * 0.9), False,
                                        False),
    "imperceptibility.psd": (lambda x, y: metrics.psd(x, x * 0.9), False, False),
    "imperceptibility.stats": (lambda x, y: metrics.ImperceptibilityStats.from_batch(
        x, x * 0.9).compute(), False, False),
    "neurons.uncertainty": (lambda x, y: metrics.neuron_uncertainty(
        metrics.activations_fn(_MODULE, PARAMS), x, jax.random.key(0),
        metrics.NeuronUncertaintyConfig(num_samples=2)), True, False),
    "defenses.adaptive_evaluation": (lambda x, y: evaluation.adaptive_evaluation(
        MODEL, x, y, jax.random.key(0), evaluation.AdaptiveEvaluationConfig(
            steps=1, square_queries=2, eot_samples=1)), True, True),
    "defenses.transformation": (lambda x, y: transforms.get("bit_depth", bits=2)(x), False,
                                False),
    "defenses.fit_mahalanobis": (_fit_mahalanobis, False, True),
    "train.fit": (_fit, True, True),
    "train.train_certified": (lambda x, y: train_certified(
        x, y, jax.random.key(0), epochs=1, batch_size=2), False, True),
}

IMAGE_CASES = {
    # name: (transform (x, y) -> (x, y), message, needs the model, needs labels)
    "nan pixel": (lambda x, y: (x.at[1, 2, 2, 0].set(jnp.nan), y),
                  r"1 image\(s\), at indices \[1\]", False, False),
    "labels out of range": (lambda x, y: (x, y.at[0].set(10)), r"\[0, 10\)", True, True),
    "empty batch": (lambda x, y: (x[:0], y[:0]), "empty", False, False),
    "NCHW batch": (lambda x, y: (x.transpose(0, 3, 1, 2), y), "NCHW", True, False),
    "channel mismatch": (lambda x, y: (x[..., :2], y), "could not be applied|model expects", True,
                         False),
    "length mismatch": (lambda x, y: (x, y[:3]), "3 labels but", False, True),
}


def _image_params():
    out = []
    for entry, (_, uses_model, takes_labels) in sorted(IMAGE_ENTRIES.items()):
        for case, (_, _, needs_model, needs_labels) in sorted(IMAGE_CASES.items()):
            if (needs_model and not uses_model) or (needs_labels and not takes_labels):
                continue
            if entry == "train.train_certified" and case == "labels out of range":
                continue  # it builds the model from the labels: any label is in range
            out.append((entry, case))
    return out


@pytest.mark.parametrize("entry, case", _image_params())
def test_every_image_entry_point_rejects_bad_input_clearly(entry, case):
    fn = IMAGE_ENTRIES[entry][0]
    transform, pattern = IMAGE_CASES[case][:2]
    x, y = transform(*data())
    with pytest.raises(validation.InputError, match=pattern):
        fn(x, y)


def test_bad_pixel_range_and_integer_images_are_named():
    x, y = data()
    with pytest.raises(validation.InputError, match=r"pixel range \[0, 1\]"):
        metrics.eni(tiny_apply, PARAMS, x * 255, y, x)
    with pytest.raises(validation.InputTypeError, match="astype"):
        metrics.lp_distortions((x * 255).astype(jnp.uint8), x)
    with pytest.raises(validation.InputError, match="x_adv has shape"):
        metrics.ssim(jnp.zeros((2, 12, 12, 3)), jnp.zeros((2, 12, 12, 1)))


def test_report_data_check_names_the_dataset():
    x, y = np.asarray(data()[0]), np.asarray(data()[1])
    spec = MODEL.spec
    with pytest.raises(validation.InputError, match="dataset 'd'.*NaN"):
        inputs.fit_data(np.where(np.arange(4)[:, None, None, None] == 3, np.nan, x), y, spec,
                        dataset="dataset 'd'")
    with pytest.raises(validation.InputError, match="10 classes"):
        inputs.fit_data(x, y + 10, spec, dataset="dataset 'd'")
    with pytest.raises(validation.InputError, match="NCHW"):
        inputs.check_model(MODEL, x.transpose(0, 3, 1, 2), y)
    inputs.check_model(MODEL, x, y)  # a good batch passes


# ------------------------------------------------------------------ model outputs


def nan_for_bright(params, x):
    """A model that returns NaN logits for some inputs (mean pixel above 0.5)."""
    logits = tiny_apply(params, x)
    bright = jnp.mean(x, axis=(1, 2, 3)) > 0.5
    return jnp.where(bright[:, None], jnp.nan, logits)


def test_a_model_returning_nan_is_reported_with_the_inputs_indices():
    x, y = data(6)
    x = x.at[1].set(0.9).at[4].set(0.8).at[jnp.array([0, 2, 3, 5])].multiply(0.5)
    with pytest.raises(validation.ModelOutputError, match=r"2 input\(s\), at indices \[1, 4\]"):
        metrics.eni(nan_for_bright, PARAMS, x, y, x)
    with pytest.raises(validation.ModelOutputError, match=r"indices \[1, 4\]"):
        metrics.TaskStats.from_batch(nan_for_bright(PARAMS, x), y)
    # what ebd1/ebd2 run first (their searches would read a NaN logit as a flip)
    with pytest.raises(validation.ModelOutputError, match=r"indices \[1, 4\]"):
        validation.model_output_checks(nan_for_bright, PARAMS, x)()


def test_check_outputs_names_the_examples():
    loss = jnp.array([0.0, jnp.nan, 1.0])
    x_adv = jnp.zeros((3, 2, 2, 1)).at[2, 0, 0, 0].set(jnp.inf)
    with pytest.raises(validation.ModelOutputError, match=r"2 input\(s\), at indices \[1, 2\]"):
        validation.check_outputs((x_adv, loss))()
    validation.check_outputs((x_adv.at[2].set(0.0), loss.at[1].set(0.0)))()  # all finite


def test_attack_checks_read_the_outputs_in_the_same_transfer():
    # what robustjax.entry's attack call does: check, dispatch the attack, then complete the
    # checks with the result, so a model that returns NaN for some inputs is named; on a mesh
    # (start_value_checks after the body) and in the common eager call (packed_checks inside
    # the attack's own program, read_packed after it)
    from robustjax import attacks

    x, y = data(6)
    x = x.at[1].set(0.9).at[4].set(0.8).at[jnp.array([0, 2, 3, 5])].multiply(0.5)
    cfg = attacks.FGSMConfig()
    body = jax.jit(attacks.fgsm.body, static_argnums=(0, 5))

    @functools.partial(jax.jit, static_argnums=0)
    def fused(fn, x, y):
        result = attacks.fgsm.body(fn, PARAMS, x, y, None, cfg)
        return result, validation.packed_checks(x, y, (result.x_adv, result.loss))

    for fn, bad in ((nan_for_bright, True), (tiny_apply, False)):
        probe = validation.check_attack_call(fn, fn, PARAMS, x, y, cfg, gradient=True)
        finish = validation.start_value_checks(x, y, probe.num_classes)
        result = body(fn, PARAMS, x, y, None, cfg)
        result2, packed = fused(fn, x, y)
        read = functools.partial(validation.read_packed, packed, x, y, probe.num_classes,
                                 (result2.x_adv, result2.loss))
        if bad:
            with pytest.raises(validation.ModelOutputError, match=r"at indices \[1, 4\]"):
                finish((result.x_adv, result.loss))
            with pytest.raises(validation.ModelOutputError, match=r"at indices \[1, 4\]"):
                read()
        else:
            finish((result.x_adv, result.loss))  # finite: nothing raised
            read()
    # the public entry point, eager: the same report
    key = jax.random.PRNGKey(0)
    with pytest.raises(validation.ModelOutputError, match=r"at indices \[1, 4\]"):
        attacks.pgd(nan_for_bright, PARAMS, x, y, key, attacks.PGDConfig(steps=2))
    assert attacks.pgd(tiny_apply, PARAMS, x, y, key,
                       attacks.PGDConfig(steps=2)).x_adv.shape == x.shape


def test_packed_checks_report_what_the_separate_checks_report():
    # the eager entry points compute the value checks inside their own program and read one
    # float32[5] back; the errors are those of start_value_checks
    x, y = data(4)
    ok = jax.jit(validation.packed_checks)(x, y)
    validation.read_packed(ok, x, y, 10)  # valid: nothing raised
    for bad_x, match in ((x.at[2].set(jnp.nan), r"1 image\(s\), at indices \[2\]"),
                         (x.at[0, 0, 0, 0].set(1.5), r"pixel range \[0, 1\]")):
        with pytest.raises(validation.InputError, match=match):
            validation.read_packed(validation.packed_checks(bad_x, y), bad_x, y, 10)
    for labels in (y.at[1].set(10), y.at[3].set(-1)):
        with pytest.raises(validation.InputError, match=r"class indices in \[0, 10\)"):
            validation.read_packed(validation.packed_checks(x, labels), x, labels, 10)
    # the label range travels as int32 bits: exact where float32 would round (2**30 + 1)
    big = jnp.full(4, 2 ** 30 + 1, jnp.int32)
    validation.read_packed(validation.packed_checks(x, big), x, big, 2 ** 30 + 2)
    with pytest.raises(validation.InputError, match=r"got labels in \[1073741825"):
        validation.read_packed(validation.packed_checks(x, big), x, big, 2 ** 30 + 1)
    # unsigned labels beyond int32 saturate (an error), never wrap into the valid range
    huge = jnp.full(4, 2 ** 32 - 1, jnp.uint32)
    with pytest.raises(validation.InputError, match=r"class indices"):
        validation.read_packed(validation.packed_checks(x, huge), x, huge, 10)
    # the result's arrays: NaN in a row is named; +inf in a per-example loss is allowed
    loss = jnp.array([0.0, jnp.inf, 1.0, 2.0])
    validation.read_packed(validation.packed_checks(x, y, (x, loss)), x, y, 10, (x, loss))
    with pytest.raises(validation.ModelOutputError, match=r"at indices \[3\]"):
        nan_loss = loss.at[3].set(jnp.nan)
        validation.read_packed(validation.packed_checks(x, y, (x, nan_loss)), x, y, 10,
                               (x, nan_loss))
