"""The typed contract (`nst_jax.models.protocols`) and the run-time registry (`models.register` / `unregister`)."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

import toy_family as toy
from nst_jax import models, stylize
from nst_jax.errors import InputError, NstError, StyleError
from nst_jax.models import protocols
from nst_jax.models.open import Loaded

CALLABLE_FIELDS = {f.name for f in dataclasses.fields(models.Family)
                   if "Fn" in str(f.type)}


def test_every_callable_field_is_in_exactly_one_group():
    assert set(protocols.INFERENCE).isdisjoint(protocols.TRAINING)
    assert CALLABLE_FIELDS == set(protocols.CONTRACT)


@pytest.mark.parametrize("name", ["adain", "cin", "arbitrary"])
def test_every_family_fits_its_protocols(name):
    family = models.get(name)
    protocols.check_family(family)
    assert set(family.inference_fields()) <= set(protocols.INFERENCE)
    assert {"condition", "stylize"} <= set(family.inference_fields())
    assert {"init_params", "setup", "loss_fn"} <= set(family.training_fields())


def test_a_wrong_signature_is_named_at_registration():
    def stylize_two_args(params, frozen):
        return params

    bad = dataclasses.replace(toy.FAMILY, name="toy_bad", stylize=stylize_two_args)
    with pytest.raises(NstError, match=r"'toy_bad' does not fit the contract: stylize \(expected StylizeFn"):
        models.register(bad)
    assert "toy_bad" not in models.MODELS
    # `static` must be accepted by keyword: the programs pass it as a static argument
    assert not protocols.conforms(lambda p, f, c, cond, a, spec: c, protocols.StylizeFn)
    assert protocols.conforms(lambda p, f, c, cond, a, static=None: c, protocols.StylizeFn)


def test_register_unregister_and_fresh_programs_for_a_replaced_family():
    models.register(toy.FAMILY)
    try:
        assert models.get(toy.NAME) is toy.FAMILY and toy.NAME in models.MODELS
        with pytest.raises(NstError, match="already registered"):
            models.register(toy.FAMILY)
        params = jax.tree.map(np.asarray, toy.init_params(jax.random.PRNGKey(0)))
        x = np.random.default_rng(0).random((1, 8, 8, 3), np.float32)

        def run(family):
            return stylize.Stylizer(Loaded(family, params, {}, toy.ToySpec(), "toy")).stylize(x, [0])

        before = run(models.get(toy.NAME))
        # The same name, another network (its output inverted): its programs, not the first family's.
        inverted = dataclasses.replace(
            toy.FAMILY, stylize=lambda p, f, c, cond, a, static: 1.0 - toy.FAMILY.stylize(p, f, c, cond, a, static))
        models.register(inverted, replace=True)
        assert models.get(toy.NAME) is inverted
        np.testing.assert_allclose(run(models.get(toy.NAME)), 1.0 - before, atol=1e-6)
    finally:
        models.unregister(toy.NAME)
    assert toy.NAME not in models.MODELS
    with pytest.raises(NstError, match="unknown model family 'toy'"):
        models.get(toy.NAME)


def test_models_raise_user_errors_the_stylizer_no_longer_rechecks():
    """A style outside the table is the family's `StyleError` (an `NstError`: one line on the command line)."""
    params = jax.tree.map(np.asarray, toy.init_params(jax.random.PRNGKey(0)))
    st = stylize.Stylizer(Loaded(toy.FAMILY, params, {}, toy.ToySpec(), "toy"))
    x = np.random.default_rng(0).random((1, 8, 8, 3), np.float32)
    with pytest.raises(StyleError, match=r"out of range: this model has 2 styles \(0-1\)"):
        st.stylize(x, [2])
    with pytest.raises(StyleError, match="style weights have 3 values; this model has 2 styles"):
        st.stylize(x, [np.ones(3, np.float32)])

    from nst_jax.models import cin

    cin_params = {"contract": {"0": {"norm": {"gamma": np.ones((3, 8), np.float32)}}}}  # a 3-row table
    with pytest.raises(StyleError, match=r"style index 3 is out of range: this model has 3 styles \(0-2\)"):
        cin.condition(cin_params, {}, np.array([0, 3]))
    with pytest.raises(StyleError, match=r"\(N, 3\)"):
        cin.condition(cin_params, {}, np.ones((1, 4), np.float32))
    assert issubclass(StyleError, NstError) and issubclass(InputError, NstError)
