import pytest

from middleware.errors import ModelNotFound
from proxy.config import load_config
from proxy.routing import Router


def router(tmp_path, text="", env=None):
    path = tmp_path / "sluice.toml"
    path.write_text(text)
    return Router(load_config(path, env=env or {}))


def test_provider_slash_model_goes_to_that_provider_with_its_own_id(tmp_path):
    route = router(tmp_path).resolve("cerebras/llama3.1-8b")
    assert [(t.provider, t.model) for t in route.targets] == [("cerebras", "llama3.1-8b")]
    assert route.targets[0].base_url == "https://api.cerebras.ai/v1"


def test_model_ids_with_slashes_keep_everything_after_the_provider(tmp_path):
    route = router(tmp_path).resolve("openrouter/meta-llama/llama-3.1-8b-instruct")
    assert route.targets[0].provider == "openrouter"
    assert route.targets[0].model == "meta-llama/llama-3.1-8b-instruct"


def test_route_alias_keeps_targets_and_strategy(tmp_path):
    text = '[routes.fast]\nstrategy = "race"\ntargets = ["cerebras/llama3.1-8b", "groq/llama-3.1-8b-instant"]\n'
    route = router(tmp_path, text).resolve("fast")
    assert route.strategy == "race"
    assert [t.name for t in route.targets] == ["cerebras/llama3.1-8b", "groq/llama-3.1-8b-instant"]


def test_bare_model_prefers_a_provider_that_has_a_key(tmp_path):
    text = '[providers.openrouter]\nmodels = ["gpt-4o-mini"]\n'
    without_keys = router(tmp_path, text).resolve("gpt-4o-mini")
    with_openrouter_key = router(tmp_path, text, env={"OPENROUTER_API_KEY": "k"}).resolve("gpt-4o-mini")
    assert without_keys.targets[0].provider == "openai"
    assert with_openrouter_key.targets[0].provider == "openrouter"


def test_bare_model_listed_by_a_custom_provider(tmp_path):
    text = '[providers.local]\nbase_url = "http://127.0.0.1:9/v1"\nmodels = ["my-model"]\n'
    assert router(tmp_path, text).resolve("my-model").targets[0].provider == "local"


def test_auto_without_config_is_every_keyed_catalog_model(tmp_path):
    route = router(tmp_path, env={"GROQ_API_KEY": "k"}).resolve("auto")
    assert route.targets
    assert {t.provider for t in route.targets} == {"groq"}


def test_auto_with_no_keys_is_404(tmp_path):
    with pytest.raises(ModelNotFound, match="no provider has an API key"):
        router(tmp_path).resolve("auto")


@pytest.mark.parametrize("model", ["nope", "nope/x", "cerebras/", "/x"])
def test_unknown_model_is_404_naming_it(tmp_path, model):
    with pytest.raises(ModelNotFound) as caught:
        router(tmp_path).resolve(model)
    assert repr(model)[1:-1] in caught.value.message
    assert caught.value.param == "model"


def test_routable_names_list_aliases_auto_and_catalog_models(tmp_path):
    names = router(tmp_path, '[routes.fast]\ntargets = ["openai/gpt-4o-mini"]\n').routable_names()
    assert names[:2] == ["fast", "auto"]
    assert "cerebras/llama3.1-8b" in names


def test_auto_without_config_puts_the_cheapest_for_a_typical_request_first(tmp_path):
    from proxy.ordering import expected_cost
    from proxy.pricing import PriceTable

    route = router(tmp_path, env={"GROQ_API_KEY": "k", "OPENAI_API_KEY": "k"}).resolve("auto")
    prices = PriceTable.builtin()
    costs = [expected_cost(prices.lookup(t.provider, t.model), 1000, 256) for t in route.targets]
    priced = [c for c in costs if c is not None]
    assert priced == sorted(priced)
    assert costs[: len(priced)] == priced  # unpriced ones last
    assert route.targets[0].name == "groq/llama-3.1-8b-instant"
