import subprocess

import pytest
import yaml

from conftest import RECIPE, ROOT
from toolkit.task.keys import recipe_keys
from toolkit.task.recipe import MAX_ENUM, Recipe, load_recipe, load_ref, parse_override
from toolkit.io.errors import RecipeError


def shipped_recipes() -> list:
    return list(_shipped())


def _shipped():
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        profiles = [None] + list((yaml.safe_load(path.read_text()).get("profiles") or {}))
        for profile in profiles:
            yield pytest.param(path, profile, id=f"{path.stem}-{profile}")


@pytest.mark.parametrize("path,profile", shipped_recipes())
def test_every_shipped_recipe_loads_and_its_files_exist(path, profile):
    recipe = load_recipe(path, profile)
    for which in ("teacher", "base", "student"):
        assert recipe.prompt(which), f"{which} prompt is empty"
    for name in (recipe.data.pool, recipe.data.labelled, *recipe.data.test):
        # shipped, or built on the user's machine (`xtk data generate`) where its licence keeps it out of git
        assert name is None or recipe.path(name).is_file() or subprocess.run(
            ["git", "check-ignore", "-q", name], cwd=ROOT).returncode == 0, name
    for key, ref in (("baseline", recipe.baseline), ("data.generator", recipe.data.generator)):
        assert ref is None or callable(load_ref(ref, key))
    schema = recipe.json_schema()
    assert all(answer["required"] == recipe.field_names for answer in schema.get("anyOf", [schema]))


def test_profiles_override_only_what_they_name():
    gpu, cpu = load_recipe(RECIPE, "gpu"), load_recipe(RECIPE, "cpu")
    assert gpu.student.model == "Qwen/Qwen3-0.6B" and cpu.student.model == "gemma3-270m"
    assert cpu.train.lora_rank == gpu.train.lora_rank == 8  # not named in the cpu profile
    assert cpu.train.torch_dtype == "float32" and gpu.train.torch_dtype == "bfloat16"


def test_gpu_profile_is_the_tutorial():
    t = load_recipe(RECIPE, "gpu").train
    assert (t.tuner_type, t.lora_rank, t.lora_alpha, t.target_modules) == ("lora", 8, 32, "all-linear")
    assert (t.num_train_epochs, t.per_device_train_batch_size, t.gradient_accumulation_steps) == (10, 20, 16)
    assert (t.learning_rate, t.max_length, t.warmup_ratio, t.torch_dtype) == (1e-4, 2048, 0.05, "bfloat16")


def test_overrides_are_typed_and_nested():
    r = load_recipe(RECIPE, "cpu", ["train.max_steps=5", "eval.vllm.cpu_kvcache_gib=3", "teacher.model=x/y"])
    assert r.train.max_steps == 5 and r.eval.vllm.cpu_kvcache_gib == 3 and r.teacher.model == "x/y"
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    with pytest.raises(RecipeError, match="expected key=value"):
        parse_override("train.max_steps")


def test_misspelt_key_names_file_line_and_key(tmp_path):
    bad = tmp_path / "recipes" / "bad.yaml"
    bad.parent.mkdir()
    text = RECIPE.read_text().replace("  lora_alpha: 32", "  lora_alpah: 32")
    bad.write_text(text)
    line = text.splitlines().index("  lora_alpah: 32") + 1
    with pytest.raises(RecipeError) as err:
        load_recipe(bad)
    msg = str(err.value)
    assert f"{bad}:{line}: key 'train.lora_alpah': unknown key" in msg
    assert "key 'train.lora_alpha': required key is missing" in msg
    with pytest.raises(RecipeError) as err:  # an override beside it takes nothing from the file's line numbers
        load_recipe(bad, overrides=["eval.limit=3"])
    assert f"{bad}:{line}: key 'train.lora_alpah': unknown key" in str(err.value)


def test_wrong_type_names_key_and_what_was_expected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(RECIPE.read_text().replace("  lora_rank: 8", "  lora_rank: eight"))
    with pytest.raises(RecipeError, match=r"bad.yaml:\d+: key 'train.lora_rank': expected a valid integer.*'eight'"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match=r"key 'train.torch_dtype' \(from a command-line override\): expected"):
        load_recipe(RECIPE, "cpu", ["train.torch_dtype=float64"])


def test_spread_over_must_name_fields_of_the_recipe():
    with pytest.raises(RecipeError, match=r"data.spread_over names \['county'\], not fields of this recipe"):
        load_recipe(RECIPE, "cpu", ["data.spread_over=[district, county]"])


def test_extra_args_may_not_replace_the_output_layer_plugin():
    with pytest.raises(RecipeError, match="bf16_output_layer passes ms-swift --callbacks itself"):
        load_recipe(RECIPE, "cpu", ["train.extra_args=[--callbacks, lisa]"])
    assert load_recipe(RECIPE, "cpu", ["train.extra_args=[--callbacks, lisa]", "train.bf16_output_layer=false"])


def test_unknown_profile_and_missing_file():
    with pytest.raises(RecipeError, match="no profile 'tpu'.*gpu, cpu"):
        load_recipe(RECIPE, "tpu")
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe(ROOT / "recipes" / "nope.yaml")


def untabled(recipe: Recipe) -> Recipe:
    """The recipe without its tables: each field's schema on its own."""
    return Recipe(**{**recipe.public_dict(), "tables": []}, root=recipe.root)


def test_json_schema_bounds_every_string_the_recipe_bounds():
    from vllm.v1.structured_output.backend_xgrammar import has_xgrammar_unsupported_json_features  # loads vLLM

    recipe = untabled(load_recipe(RECIPE, "cpu"))
    schema = recipe.json_schema()
    assert schema["required"] == recipe.field_names and schema["additionalProperties"] is False
    assert {k: v.get("maxLength") for k, v in schema["properties"].items()} == {
        f.name: None if f.pattern else f.max_chars for f in recipe.fields}
    # a patterned string is bounded by its pattern alone: vLLM refuses xgrammar for pattern and maxLength together
    assert schema["properties"]["phone"]["pattern"] == "^([0-9]{11})?$"
    assert not has_xgrammar_unsupported_json_features(schema)


def test_fields_bound_to_a_table_take_its_combinations_in_the_schema_whatever_their_number():
    """logistics_zh binds province, city and district to the MCA table: every branch of the schema is one
    province and city with their districts, the free fields by reference to their own bounded schemas, and the
    2,800 districts are all there (before, a closed set over MAX_ENUM values was dropped from the schema)."""
    from vllm.v1.structured_output.backend_xgrammar import has_xgrammar_unsupported_json_features  # loads vLLM

    recipe = load_recipe(RECIPE, "cpu")
    table, schema = recipe.table_of("district"), recipe.json_schema()
    assert recipe.table_of("phone") is None and table.columns == ("province", "city", "district")
    assert all(b["required"] == recipe.field_names and b["additionalProperties"] is False for b in schema["anyOf"])
    districts = {d for b in schema["anyOf"] for d in b["properties"]["district"].get("enum", [
        b["properties"]["district"].get("const")])}
    assert len(districts) > MAX_ENUM and districts == table.values("district") and "" in districts
    assert {k: v.get("maxLength") for k, v in schema["$defs"].items()} == {
        f.name: None if f.pattern else f.max_chars for f in recipe.fields if f.name not in table.columns}
    assert not has_xgrammar_unsupported_json_features(schema)  # vLLM decodes it with xgrammar, no fallback


def with_fields(recipe: Recipe, **changes: dict) -> Recipe:
    """The recipe with some fields' keys changed, validated as a new recipe."""
    data = recipe.public_dict()
    data["fields"] = [f | changes.get(f["name"], {}) for f in data["fields"]]
    return Recipe(**data, root=recipe.root)


def test_allowed_values_come_from_the_recipe_normalised_with_the_fields_normalisers():
    recipe = load_recipe(RECIPE, "cpu")
    provinces = recipe.path("datasets/logistics_zh/provinces.txt").read_text(encoding="utf-8").splitlines()
    assert recipe.allowed_values("province") == frozenset(provinces) and "天津市" in provinces
    assert "" in recipe.allowed_values("district") and "" not in recipe.allowed_values("city")
    assert recipe.allowed_values("name") is None  # an open field
    inline = with_fields(recipe, province={"choices_file": None, "choices": [" 天津市 ", "ＡＢ省", ""]})
    assert inline.allowed_values("province") == frozenset({"天津市", "AB省", ""})  # strip, width


def test_small_closed_sets_become_the_schemas_enum():
    recipe = untabled(load_recipe(RECIPE, "cpu"))
    props = recipe.json_schema()["properties"]
    assert props["province"]["enum"] == recipe.path("datasets/logistics_zh/provinces.txt").read_text(
        encoding="utf-8").splitlines()
    assert len(props["city"]["enum"]) == len(recipe.allowed_values("city"))
    assert "enum" not in props["district"]  # ~2,800 counties: checked after decoding, not in the grammar
    assert "enum" not in props["name"]
    inline = with_fields(recipe, phone={"choices": ["1", "2", "1"]})
    assert inline.json_schema()["properties"]["phone"]["enum"] == ["1", "2"]


def test_choices_and_choices_file_together_are_refused(tmp_path):
    text = RECIPE.read_text(encoding="utf-8")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("    choices_file: datasets/logistics_zh/cities.txt",
                                "    choices_file: datasets/logistics_zh/cities.txt\n    choices: [天津市]"))
    line = text.splitlines().index("  - name: city") + 1
    with pytest.raises(RecipeError, match=rf"bad.yaml:{line}: key 'fields.1': expected either choices or "
                                          r"choices_file, not both$"):
        load_recipe(bad)


def test_code_is_named_as_module_function_and_a_wrong_name_says_which_key():
    with pytest.raises(RecipeError, match=r"key 'baseline' \(from a command-line override\): expected "
                                          r"module:function \(e.g. toolkit.infer.classical:tfidf_logreg\), got "
                                          r"'toolkit.tasks.logistics_zh.baseline.answer'$"):
        load_recipe(RECIPE, None, ["baseline=toolkit.tasks.logistics_zh.baseline.answer"])
    with pytest.raises(RecipeError, match=r"recipe key baseline: toolkit.tasks.logistics_zh.baseline:nope: "
                                          r"toolkit.tasks.logistics_zh.baseline has no function"):
        load_ref("toolkit.tasks.logistics_zh.baseline:nope", "baseline")
    with pytest.raises(RecipeError, match=r"recipe key data.generator: no_such_module:build: cannot import"):
        load_ref("no_such_module:build", "data.generator")


def test_training_data_is_named_somewhere():
    with pytest.raises(RecipeError, match=r"key 'data': expected labelled .* or pool"):
        load_recipe(RECIPE, None, ["data.pool=null", "data.pool_gold=null"])


def test_the_cpu_profile_decodes_to_the_schema_and_the_transformers_engine_says_it_cannot(tmp_path, capsys):
    from toolkit.cli import main

    assert load_recipe(RECIPE, "cpu").eval.guided_json and not load_recipe(RECIPE, "gpu").eval.guided_json
    args = ["eval", str(RECIPE), "--profile", "cpu", "--run", str(tmp_path), "--model", "base", "eval.limit=1"]
    assert main([*args, "--backend", "transformers"]) == 2
    err = capsys.readouterr().err
    assert "needs the vllm or llamacpp backend, not transformers" in err and "eval.guided_json=false" in err
    assert not list(tmp_path.rglob("metrics.json"))  # nothing evaluated, nothing half-written


def test_every_recipe_key_is_documented_where_it_is_declared():
    keys = recipe_keys()
    assert {"train.lora_rank", "eval.vllm.max_model_len", "fields.*.choices_file", "data.spread_over"} <= {
        k.path for k in keys}
    assert not [k.path for k in keys if not k.description.strip()]
    hidden = {name: info for name, info in Recipe.model_fields.items() if name in ("root", "profile")}
    assert hidden and all(info.description for info in hidden.values())  # set by xtk, documented all the same


def test_recipe_keys_prints_type_default_value_and_description(capsys):
    from toolkit.cli import main

    assert main(["recipe", "keys", str(RECIPE), "--profile", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "\ntrain.lora_rank: int > 0; default required; value 8\n    LoRA rank" in out
    assert '\nfields.0.name: str; default required; value "district"\n' in out
    assert "\ntrain.tuner_type: lora | full; default \"lora\"; value \"lora\"\n" in out
    assert "\nbaseline: module:function | null; default null; value " in out
    assert main(["recipe", "keys", str(RECIPE), "--profile", "cpu", "train.lora_rank=16"]) == 0
    assert "\ntrain.lora_rank: int > 0; default required; value 16\n" in capsys.readouterr().out
    assert main(["recipe", "keys"]) == 0
    out = capsys.readouterr().out
    assert "\neval.vllm.max_model_len: int > 0; default 4096\n" in out and "; value " not in out
    assert "fields.*.max_items: int | null > 0; default null\n" in out
