"""What a GPU user's run is given, checked by the libraries that will read it: the gpu profile's `swift sft` argv
parsed by ms-swift's own `SftArguments` (as `swift sft` parses it: HfArgumentParser into the dataclass, with its
__post_init__), and the keyword arguments xtk hands `vllm.LLM` taken by vLLM's own `EngineArgs`.

No model is loaded and no GPU is needed. The student is `qwen3_fixture`'s Qwen3-shaped folder, so that ms-swift
and vLLM can read a real config offline; the only stand-in is transformers' probe for a bf16-capable GPU, which
this CPU machine lacks (transformers refuses `bf16` without one: that refusal is why CPU runs override the dtype).
"""

import json
from pathlib import Path

import pytest

from conftest import RECIPE
from qwen3_fixture import qwen3_tiny_folder
from toolkit.model.models import resolve_model
from toolkit.task.recipe import load_recipe
from toolkit.io.errors import RecipeError
from toolkit.io.trust import Consent
from toolkit.train.swift import sft_argv


@pytest.fixture(scope="module")
def qwen3_tiny() -> Path:
    return qwen3_tiny_folder()


@pytest.fixture
def data(tmp_path) -> Path:
    row = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                        {"role": "assistant", "content": "{}"}]}
    for name in ("train.jsonl", "val.jsonl"):
        (tmp_path / name).write_text(json.dumps(row) + "\n")
    return tmp_path


def gpu_recipe(student: Path, *overrides: str):
    return load_recipe(RECIPE, "gpu", [f"student.model={student}", *overrides])


def argv_for(recipe, data: Path) -> list[str]:
    s = recipe.student
    model = resolve_model(s.model, s.model_type, s.template, s.trust_remote_code)
    return sft_argv(recipe, model, data / "train.jsonl", data / "val.jsonl", data / "out")


def swift_parse(argv: list[str], monkeypatch):
    """`swift sft`'s own parsing of our argv, on a machine that had a bf16 GPU."""
    import transformers.training_args
    from swift.arguments import SftArguments
    from swift.utils import parse_args

    assert argv[:2] == ["swift", "sft"]
    monkeypatch.setattr(transformers.training_args, "is_torch_bf16_gpu_available", lambda: True)
    args, unknown = parse_args(SftArguments, argv[2:])
    assert unknown == []  # every flag is one ms-swift 4.x knows
    return args


def test_the_gpu_profile_is_the_tutorials_bf16_training_as_ms_swift_reads_it(qwen3_tiny, data, monkeypatch):
    import torch
    from swift.template import TEMPLATE_MAPPING

    recipe = gpu_recipe(qwen3_tiny)
    t = recipe.train
    args = swift_parse(argv_for(recipe, data), monkeypatch)
    hf = args.training_args  # what the trainer itself is given
    # bf16 weights and bf16 mixed precision, as the tutorial trains; never fp16 beside it
    assert args.torch_dtype == torch.bfloat16 and (hf.bf16, hf.fp16) == (True, False)
    # 20 rows per device and 16 accumulation steps: 320 rows per optimiser step
    assert (hf.per_device_train_batch_size, hf.gradient_accumulation_steps) == (20, 16)
    assert (hf.per_device_train_batch_size, hf.gradient_accumulation_steps, hf.per_device_eval_batch_size) == \
        (t.per_device_train_batch_size, t.gradient_accumulation_steps, t.per_device_eval_batch_size)
    assert (hf.learning_rate, hf.num_train_epochs, hf.max_steps, hf.weight_decay, hf.lr_scheduler_type.value) == \
        (t.learning_rate, t.num_train_epochs, t.max_steps, t.weight_decay, t.lr_scheduler_type)
    # transformers 5 keeps a warm-up ratio as a fraction in warmup_steps: 5% of the steps, not 0 steps
    assert hf.get_warmup_steps(1000) == round(1000 * t.warmup_ratio) == 50
    assert (args.tuner_type, args.lora_rank, args.lora_alpha, args.lora_dropout, args.target_modules) == \
        (t.tuner_type, t.lora_rank, t.lora_alpha, t.lora_dropout, [t.target_modules])
    assert (args.max_length, hf.gradient_checkpointing, hf.dataloader_num_workers) == \
        (t.max_length, t.gradient_checkpointing, t.dataloader_num_workers)
    assert (hf.eval_strategy.value, hf.eval_steps, hf.save_steps, hf.save_total_limit, hf.logging_steps) == \
        ("steps", t.eval_steps, t.save_steps, t.save_total_limit, t.logging_steps)
    assert hf.output_dir == str(data / "out") and hf.report_to == ["tensorboard"] and hf.deepspeed is None
    # the Qwen3 student: ms-swift's qwen3 type and hybrid-thinking template, thinking off
    assert (args.model_type, args.template, args.enable_thinking) == ("qwen3", recipe.student.template, False)
    assert args.template in TEMPLATE_MAPPING and TEMPLATE_MAPPING[args.template].non_thinking_prefix == \
        "<think>\n\n</think>\n\n"


def test_the_cpu_profiles_float32_gets_no_bf16(gemma, data, monkeypatch):
    import torch

    recipe = load_recipe(RECIPE, "cpu")
    args = swift_parse(argv_for(recipe, data), monkeypatch)
    assert args.torch_dtype == torch.float32 and args.training_args.bf16 is False
    assert (args.model_type, args.template, args.enable_thinking) == ("gemma3_text", "gemma3_text", None)


def test_deepspeed_when_set_names_one_of_ms_swifts_zero_configs(qwen3_tiny, data, monkeypatch):
    """`train.deepspeed=zero2` reaches ms-swift as `--deepspeed zero2`, which ms-swift's own resolution turns into
    its shipped ZeRO-2 config. DeepSpeed itself is not installed here (transformers would import it to build the
    training arguments), so the flag is parsed by ms-swift's parser and resolved by its `_init_deepspeed`."""
    from swift.arguments import SftArguments, sft_args
    from transformers import HfArgumentParser

    argv = argv_for(gpu_recipe(qwen3_tiny, "train.deepspeed=zero2"), data)
    assert argv[argv.index("--deepspeed") + 1] == "zero2"
    namespace, unknown = HfArgumentParser([SftArguments]).parse_known_args(argv[2:])
    assert unknown == [] and namespace.deepspeed == "zero2"

    args = swift_parse(argv_for(gpu_recipe(qwen3_tiny), data), monkeypatch)  # the rest of the command as is
    monkeypatch.setattr(sft_args, "require_version", lambda *a, **k: None)  # "is deepspeed installed?"
    args.deepspeed = namespace.deepspeed
    args._init_deepspeed()
    assert args.deepspeed["zero_optimization"]["stage"] == 2
    assert args.deepspeed["bf16"]["enabled"] == "auto"  # follows the bf16 above


def test_vllm_takes_the_recipes_gpu_memory_and_length_in_its_own_engine_arguments(qwen3_tiny, monkeypatch):
    import torch

    monkeypatch.setenv("VLLM_PLUGINS", "lora_filesystem_resolver")  # as toolkit.infer.engines sets it
    from vllm.engine.arg_utils import EngineArgs

    from toolkit.infer.engines import vllm_kwargs

    recipe = gpu_recipe(qwen3_tiny)
    spec = recipe.eval.vllm
    on_gpu = vllm_kwargs(recipe, str(qwen3_tiny), cpu=False)
    assert (on_gpu["gpu_memory_utilization"], on_gpu["max_model_len"], on_gpu["dtype"]) == \
        (spec.gpu_memory_utilization, spec.max_model_len, "auto")
    config = EngineArgs(**on_gpu).create_engine_config()  # vLLM's own validation, no engine started
    assert config.cache_config.gpu_memory_utilization == spec.gpu_memory_utilization == 0.9
    assert config.model_config.max_model_len == spec.max_model_len == 4096
    assert config.model_config.dtype == torch.bfloat16  # "auto": the checkpoint's bf16, as on the GPU

    on_cpu = vllm_kwargs(recipe, str(qwen3_tiny), cpu=True)
    assert "gpu_memory_utilization" not in on_cpu and on_cpu["dtype"] == "float32"
    assert EngineArgs(**on_cpu).create_model_config().dtype == torch.float32

    # vLLM does refuse what it cannot take, so the checks above can fail
    with pytest.raises(TypeError):
        EngineArgs(**{**on_gpu, "gpu_memory_utilisation": 0.9})
    with pytest.raises(Exception, match="max_model_len"):
        EngineArgs(**vllm_kwargs(gpu_recipe(qwen3_tiny, "eval.vllm.max_model_len=100000"), str(qwen3_tiny),
                                 cpu=False)).create_model_config()


# --- scaling out: torchrun's nodes and rendezvous, DeepSpeed, vLLM tensor parallelism -------------------------

def test_a_multi_node_run_hands_torchrun_the_recipes_nodes_rank_address_and_port(monkeypatch):
    """Each node runs the same recipe with its own node_rank; ms-swift's launcher turns our environment into
    torchrun's flags, and torchrun's own parser reads them."""
    from swift.cli.main import get_torchrun_args
    from torch.distributed.run import get_args_parser

    from toolkit.train.swift import sft_env

    monkeypatch.setenv("MASTER_PORT", "31337")  # a port in the shell must not split the nodes: the recipe's wins
    recipe = load_recipe(RECIPE, "cpu", ["train.nnodes=2", "train.node_rank=1", "train.master_addr=10.0.0.1"])
    env = sft_env(recipe)
    env.pop("GLIBC_TUNABLES")  # CPU training's allocator setting (test_train.py)
    assert env == {"OMP_NUM_THREADS": "1", "NPROC_PER_NODE": "2", "NNODES": "2", "NODE_RANK": "1",
                   "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
    assert sft_env(load_recipe(RECIPE, "cpu", ["train.nnodes=2", "train.master_addr=10.0.0.1",
                                               "train.master_port=29611"]))["MASTER_PORT"] == "29611"

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    torchrun = get_torchrun_args()
    assert torchrun == ["--nproc_per_node", "2", "--master_port", "29500", "--nnodes", "2", "--node_rank", "1",
                        "--master_addr", "10.0.0.1"]
    parsed = get_args_parser().parse_args(torchrun + ["sft.py"])
    assert (parsed.nproc_per_node, parsed.nnodes, parsed.node_rank, parsed.master_addr, parsed.master_port) == \
        ("2", "2", 1, "10.0.0.1", 29500)


def test_one_node_keeps_a_free_port_unless_the_recipe_names_one(monkeypatch):
    from toolkit.train.swift import sft_env

    def launch(recipe):  # the launch settings, without CPU training's allocator setting (test_train.py)
        return {k: v for k, v in sft_env(recipe).items() if k != "GLIBC_TUNABLES"}

    monkeypatch.delenv("MASTER_PORT", raising=False)
    assert launch(load_recipe(RECIPE, "cpu", ["train.master_port=29611"])) == \
        {"OMP_NUM_THREADS": "1", "NPROC_PER_NODE": "2", "MASTER_PORT": "29611"}
    free = sft_env(load_recipe(RECIPE, "cpu"))["MASTER_PORT"]
    assert free != "29500" and int(free) > 0
    # one process on one node: no torchrun at all (ms-swift starts torchrun when NPROC_PER_NODE or NNODES is set)
    assert launch(load_recipe(RECIPE, "cpu", ["train.nproc_per_node=1"])) == {"OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("overrides, says", [
    (["train.nnodes=2", "train.node_rank=2", "train.master_addr=10.0.0.1"],
     "node_rank below nnodes (nodes count from 0), got node_rank 2 with nnodes 2"),
    (["train.nnodes=2"], "master_addr (the address of node 0, which every node connects to) when nnodes is 2"),
    (["train.node_rank=1"], "got node_rank 1 with nnodes 1"),
    (["train.master_port=70000"], ("key 'train.master_port' (from a command-line override): expected less than "
                                   "or equal to 65535")),
    (["train.deepspeed=zero4"], ("zero0, zero1, zero2, zero3, zero2_offload, zero3_offload) or a DeepSpeed JSON "
                                 "file, got 'zero4'")),
])
def test_nodes_that_cannot_meet_are_a_recipe_error(overrides, says):
    from toolkit.io.errors import RecipeError

    with pytest.raises(RecipeError) as err:
        load_recipe(RECIPE, "cpu", overrides)
    assert says in str(err.value) and str(RECIPE) in str(err.value)


def test_deepspeed_json_file_reaches_ms_swift_which_reads_it(qwen3_tiny, data, tmp_path, monkeypatch):
    from swift.arguments import sft_args

    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": "auto"}))
    recipe = load_recipe(RECIPE, "gpu", [f"student.model={qwen3_tiny}", f"train.deepspeed={config}"],
                         Consent(paths=(str(tmp_path),)))  # a file outside the recipe's project, allowed
    argv = argv_for(recipe, data)
    assert argv[argv.index("--deepspeed") + 1] == str(config)
    args = swift_parse(argv_for(gpu_recipe(qwen3_tiny), data), monkeypatch)
    monkeypatch.setattr(sft_args, "require_version", lambda *a, **k: None)  # DeepSpeed is not installed here
    args.deepspeed = argv[argv.index("--deepspeed") + 1]
    args._init_deepspeed()
    assert args.deepspeed == {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": "auto"}


def test_every_node_trains_under_one_key_but_more_nodes_is_another_training(tmp_path):
    """train_key: the rendezvous (rank, address, port) is where a node meets the others, not what it trains; the
    node and process counts change the effective batch, so they make another model."""
    from toolkit.model.models import ResolvedModel
    from toolkit.train.swift import train_key

    (tmp_path / "train.jsonl").write_text('{"messages": []}\n')
    model = ResolvedModel("/models/smollm2", "llama", "chatml", True)
    multi = ["train.nnodes=2", "train.master_addr=10.0.0.1"]

    def key(*overrides):
        return train_key(load_recipe(RECIPE, "cpu", list(overrides)), model, tmp_path / "train.jsonl", None)

    node0 = key(*multi)
    assert key(*multi, "train.node_rank=1") == node0
    assert key("train.nnodes=2", "train.master_addr=node0.example", "train.master_port=29611") == node0
    assert key(*multi, "train.nproc_per_node=1") != node0
    assert key() != node0 and key("train.master_port=29611") == key()
    assert key("train.nnodes=3", "train.master_addr=10.0.0.1") != node0


def test_vllm_splits_the_model_over_the_recipes_tensor_parallel_gpus(qwen3_tiny, monkeypatch):
    monkeypatch.setenv("VLLM_PLUGINS", "lora_filesystem_resolver")  # as toolkit.infer.engines sets it
    from vllm.engine.arg_utils import EngineArgs

    from toolkit.infer.engines import vllm_kwargs

    assert vllm_kwargs(gpu_recipe(qwen3_tiny), str(qwen3_tiny), cpu=False)["tensor_parallel_size"] == 1
    kwargs = vllm_kwargs(gpu_recipe(qwen3_tiny, "eval.vllm.tensor_parallel_size=2"), str(qwen3_tiny), cpu=False)
    assert kwargs == {"model": str(qwen3_tiny), "dtype": "auto", "max_model_len": 4096, "seed": 0,
                      "tensor_parallel_size": 2, "enforce_eager": False, "trust_remote_code": False,
                      "gpu_memory_utilization": 0.9}
    parallel = EngineArgs(**kwargs).create_engine_config().parallel_config  # vLLM's own reading, no engine started
    assert (parallel.tensor_parallel_size, parallel.world_size) == (2, 2)


def test_enforce_eager_reaches_vllm_as_no_compilation(qwen3_tiny, monkeypatch):
    """eval.vllm.enforce_eager: vLLM's own reading of the arguments turns torch.compile off (CompilationMode.NONE);
    by default it stays on."""
    monkeypatch.setenv("VLLM_PLUGINS", "lora_filesystem_resolver")  # as toolkit.infer.engines sets it
    from vllm.config import CompilationMode
    from vllm.engine.arg_utils import EngineArgs

    from toolkit.infer.engines import vllm_kwargs

    def mode(*overrides):
        kwargs = vllm_kwargs(gpu_recipe(qwen3_tiny, *overrides), str(qwen3_tiny), cpu=True)
        return EngineArgs(**kwargs).create_engine_config().compilation_config.mode

    assert mode("eval.vllm.enforce_eager=true") == CompilationMode.NONE
    assert mode() != CompilationMode.NONE


def test_early_stopping_reaches_ms_swift_as_its_callback_on_eval_loss(smollm2, data, monkeypatch):
    """train.early_stop_evals: ms-swift's early-stop callback, judged on the eval loss (lower is better)."""
    recipe = load_recipe(RECIPE, "cpu", ["train.early_stop_evals=3"])
    args = swift_parse(argv_for(recipe, data), monkeypatch)
    t = args.training_args
    assert (t.early_stop_interval, t.metric_for_best_model, t.greater_is_better) == (3, "loss", False)
    assert "early_stop" in t.callbacks
    with pytest.raises(RecipeError, match=r"save_steps \(7\) must equal eval_steps"):
        load_recipe(RECIPE, "cpu", ["train.early_stop_evals=3", "train.save_steps=7"])


def test_cpu_ddp_is_one_job_only_with_use_cpu(smollm2, data, monkeypatch):
    """Without CUDA, accelerate sets up DDP only when told the run is on CPU: the two processes of the cpu profile
    get --use_cpu true there, and a GPU machine's argv stays as it was."""
    import toolkit.train.swift

    recipe = load_recipe(RECIPE, "cpu")
    monkeypatch.setattr(toolkit.train.swift, "_cuda", lambda: False)
    assert swift_parse(argv_for(recipe, data), monkeypatch).training_args.use_cpu is True
    assert "--use_cpu" not in argv_for(load_recipe(RECIPE, "cpu", ["train.nproc_per_node=1"]), data)
    monkeypatch.setattr(toolkit.train.swift, "_cuda", lambda: True)
    assert "--use_cpu" not in argv_for(recipe, data)


@pytest.mark.slow
def test_two_nodes_on_this_machine_meet_and_train_as_one_ddp_group(qwen3_tiny, tmp_path):
    """A real multi-node launch, the two nodes being two `swift sft` commands on this machine's loopback: each
    gets its own node_rank from the recipe, both meet at master_addr:master_port, and torchrun makes them one
    group of 2 (gloo on CPU). Only global rank 0 writes the log and the adapter."""
    import threading

    from toolkit.io.errors import StageError
    from toolkit.io.runner import run_logged
    from toolkit.train.swift import free_port, read_log, sft_env

    row = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                        {"role": "assistant", "content": "{}"}]}
    (tmp_path / "train.jsonl").write_text((json.dumps(row) + "\n") * 4)
    nodes = ["train.nnodes=2", "train.nproc_per_node=1", "train.master_addr=127.0.0.1",
             f"train.master_port={free_port()}", "train.torch_dtype=float32", "train.per_device_train_batch_size=1",
             "train.gradient_accumulation_steps=1", "train.max_steps=2", "train.save_steps=2",
             "train.dataloader_num_workers=0", "train.omp_num_threads=1"]
    failed = {}

    def node(rank: int) -> None:
        recipe = gpu_recipe(qwen3_tiny, *nodes, f"train.node_rank={rank}")
        s = recipe.student
        out = tmp_path / f"node{rank}"
        argv = sft_argv(recipe, resolve_model(s.model, s.model_type, s.template), tmp_path / "train.jsonl", None, out)
        try:
            run_logged(argv, out / "train.log", env=sft_env(recipe))
        except StageError as exc:  # reported below, with the other node's outcome
            failed[rank] = str(exc)

    threads = [threading.Thread(target=node, args=(rank,)) for rank in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failed == {}
    for rank in (0, 1):
        log = (tmp_path / f"node{rank}" / "train.log").read_text(encoding="utf-8")
        assert f"--nproc_per_node 1 --master_port {nodes[3].split('=')[1]} --nnodes 2 --node_rank {rank} " \
               "--master_addr 127.0.0.1" in log
        assert f"rank: {rank}, local_rank: 0, world_size: 2, local_world_size: 1" in log
    finished = read_log(tmp_path / "node0")[-1]
    assert finished["last_model_checkpoint"] == str(tmp_path / "node0" / "checkpoint-2")
    assert (tmp_path / "node0" / "checkpoint-2" / "adapter_model.safetensors").is_file()
    assert read_log(tmp_path / "node1") == [] and not list((tmp_path / "node1").rglob("adapter_model.safetensors"))
