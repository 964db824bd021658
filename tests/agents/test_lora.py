"""LoRA through peft: the reference is the base exactly, only adapters train, save/load, trainers;
and the --device/--dtype resolution of agents.text.devices."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

pytest.importorskip("peft")

from agents.text.devices import placement, resolve_device, resolve_dtype  # noqa: E402
from agents.text.dpo import DPOConfig, PreferencePair, train_dpo  # noqa: E402
from agents.text.grpo import GRPO_OPTIM, GRPOConfig, train_grpo  # noqa: E402
from agents.text.lora import (  # noqa: E402
    ADAPTER_DIR,
    AdapterDisabled,
    add_lora,
    load_adapters,
    lora_targets,
    save_lm,
)
from agents.text.optim import DPO_OPTIM, optimizer_step  # noqa: E402
from envs.text.default_model import default_tokenizer, tiny_gpt2_config  # noqa: E402

torch.set_num_threads(1)

PAIRS = [
    PreferencePair("The plot was", " great and fun.", " dull and bad."),
    PreferencePair("The soup", " was lovely.", " was awful."),
    PreferencePair("The acting", " was superb.", " was boring."),
    PreferencePair("Overall, the book", " is wonderful.", " is terrible."),
]


@pytest.fixture(scope="module")
def tokenizer():
    return default_tokenizer()


def tiny_lm(tokenizer, seed: int = 0):
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    config = tiny_gpt2_config(len(tokenizer), n_layer=2, n_embd=32, n_head=2)
    return GPT2LMHeadModel(config).eval()


def batch(tokenizer) -> dict[str, torch.Tensor]:
    enc = tokenizer(["The plot was great", "The soup was awful and cold"], return_tensors="pt",
                    padding=True)  # fmt: skip
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs, use_cache=False).logits


def train_steps(model, inputs, n: int = 3) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    for _ in range(n):
        loss = model(**inputs, labels=inputs["input_ids"], use_cache=False).loss
        optimizer_step(model, loss, optimizer, scheduler, 1.0)


def test_reference_equals_base_before_and_after_training(tokenizer):
    base = tiny_lm(tokenizer)
    original = copy.deepcopy(base)
    inputs = batch(tokenizer)
    policy = add_lora(base, r=4, alpha=8.0)
    reference = AdapterDisabled(policy)
    assert torch.equal(logits(reference, inputs), logits(original, inputs))
    train_steps(policy, inputs)
    assert torch.equal(logits(reference, inputs), logits(original, inputs))
    assert not torch.allclose(logits(policy, inputs), logits(original, inputs))  # it did learn


def test_only_adapters_train_and_every_adapter_changes(tokenizer):
    policy = add_lora(tiny_lm(tokenizer), r=4, alpha=8.0)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    # Every target module of GPT-2 (attention and MLP projections) got adapters.
    for target in lora_targets(policy.base_model.model):
        assert any(f".{target}.lora_A" in n for n in trainable), target
    train_steps(policy, batch(tokenizer))
    for name, param in policy.named_parameters():
        changed = not torch.equal(param, before[name])
        assert changed == (name in trainable), name


def test_save_and_load_round_trip(tokenizer, tmp_path):
    inputs = batch(tokenizer)
    policy = add_lora(tiny_lm(tokenizer), r=4, alpha=8.0)
    train_steps(policy, inputs)
    trained = logits(policy, inputs)
    save_lm(policy, tokenizer, tmp_path / "model")
    adapter = tmp_path / "model" / ADAPTER_DIR
    assert (adapter / "adapter_config.json").is_file()
    assert (adapter / "adapter_model.safetensors").is_file()
    loaded = load_adapters(tiny_lm(tokenizer), adapter)
    torch.testing.assert_close(logits(loaded, inputs), trained, rtol=0, atol=1e-5)
    from transformers import GPT2LMHeadModel

    merged = GPT2LMHeadModel.from_pretrained(tmp_path / "model").eval()  # loads without peft
    torch.testing.assert_close(logits(merged, inputs), trained, rtol=0, atol=1e-5)


def test_dpo_step_with_lora(tokenizer):
    policy = add_lora(tiny_lm(tokenizer), r=4, alpha=8.0)
    reference = AdapterDisabled(policy)
    optim = replace(DPO_OPTIM, learning_rate=1e-2, batch_size=4, epochs=2, seed=0)
    for precompute in (True, False):
        metrics = train_dpo(policy, reference, tokenizer, PAIRS,
                            DPOConfig(optim=optim, precompute_ref=precompute))  # fmt: skip
        assert metrics.steps == 2 and all(torch.isfinite(torch.tensor(metrics.losses)))
    assert metrics.losses[-1] < 0.6931  # below log 2: the policy moved away from the reference


def test_grpo_step_with_lora(tokenizer):
    base = tiny_lm(tokenizer)
    original = copy.deepcopy(base)
    policy = add_lora(base, r=4, alpha=8.0)
    optim = replace(GRPO_OPTIM, learning_rate=1e-2, batch_size=2, max_steps=2, seed=0)
    config = GRPOConfig(num_generations=2, max_completion_length=4, optim=optim)
    reward = lambda prompts, completions: [float(c.count("e")) for c in completions]  # noqa: E731
    metrics = train_grpo(policy, tokenizer, ["The plot was", "The soup"], reward, config,
                         ref_model=AdapterDisabled(policy))  # fmt: skip
    assert metrics.steps == 2 and metrics.n_completions == 8
    inputs = batch(tokenizer)
    assert torch.equal(logits(AdapterDisabled(policy), inputs), logits(original, inputs))


def test_clear_errors(tokenizer):
    model = tiny_lm(tokenizer)
    with pytest.raises(ValueError, match="r >= 1"):
        add_lora(model, r=0, alpha=8.0)
    with pytest.raises(ValueError, match="--lora-dropout"):
        add_lora(model, r=4, alpha=8.0, dropout=1.0)
    model.config.model_type = "mystery"
    with pytest.raises(ValueError, match="no LoRA target modules known for model type 'mystery'"):
        lora_targets(model)
    with pytest.raises(TypeError, match="needs a peft model"):
        AdapterDisabled(tiny_lm(tokenizer))


# ----------------------------------------------------------------------------- devices


def test_devices_resolve_on_this_machine(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA device is visible.*use --device cpu or auto"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown --device 'tpu'"):
        resolve_device("tpu")
    assert placement("auto", "float32") == (torch.device("cpu"), torch.float32)
    with caplog.at_level("WARNING"):
        assert resolve_dtype("bfloat16", torch.device("cpu")) is torch.bfloat16
    assert "bfloat16 on cpu" in caplog.text
    with pytest.raises(ValueError, match="unknown --dtype 'float16'"):
        resolve_dtype("float16", torch.device("cpu"))


def test_bfloat16_gpu_without_support_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Old GPU")
    with pytest.raises(ValueError, match="Old GPU: this GPU does not support bfloat16"):
        resolve_dtype("bfloat16", torch.device("cuda"))


def test_ppo_kl_with_lora_trains_adapters_against_the_base_as_its_reference(tokenizer):
    """PPO-KL's LoRA reference is the base LM (adapters disabled), shares its weights and owns
    none of them; the update trains every adapter and the value head and leaves the base alone."""
    import gymnasium as gym
    import numpy as np

    from agents.ppo_kl import PPOKL, PPOKLConfig
    from agents.text.lm_policy import CausalLMPolicy, frozen_reference
    from agents.text.lora import AdapterDisabledPolicy, reference_policy_of
    from envs.text import TextTask

    base = tiny_lm(tokenizer)
    base_policy = frozen_reference(CausalLMPolicy(copy.deepcopy(base), len(tokenizer)))
    policy = CausalLMPolicy(add_lora(base, r=4, alpha=8.0), action_dim=len(tokenizer))
    ref = reference_policy_of(policy)
    assert isinstance(ref, AdapterDisabledPolicy)
    assert all(name.startswith("value_head") for name in ref.state_dict())  # no second copy
    prompts = ["The plot was", "The soup", "The acting was", "Overall, the book"]
    env = gym.vector.SyncVectorEnv(
        [lambda: TextTask("sentiment", tokenizer, prompts, max_new_tokens=6) for _ in range(4)]
    )
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    config = PPOKLConfig(n_steps=12, batch_size=16, n_epochs=2, kl_coef=0.1, gamma=1.0, seed=0,
                         learning_rate=1e-2)  # fmt: skip
    agent = PPOKL(env, config, policy=policy, ref_policy=ref)
    metrics = agent.learn(192)
    assert abs(metrics[0].kl_to_ref) < 1e-6  # B = 0 at the start: the policy is the base
    assert all(np.isfinite(m.policy_loss) for m in metrics)
    assert any(m.kl_to_ref != 0 for m in metrics[2:])  # the trained adapters move away from it
    after = policy.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    adapters = {k for k in after if "lora_" in k}
    assert adapters and adapters <= changed and "value_head.weight" in changed
    assert changed <= adapters | {"value_head.weight", "value_head.bias"}
    # the reference still gives the base model's log-probs after training
    obs, _ = env.reset(seed=1)
    obs_t = {k: torch.as_tensor(v) for k, v in obs.items()}
    actions = torch.arange(4)
    ref.reset_cache()
    with torch.no_grad():
        torch.testing.assert_close(ref.log_prob(obs_t, actions),
                                   base_policy.log_prob(obs_t, actions))  # fmt: skip
        assert not torch.allclose(policy.log_prob(obs_t, actions), ref.log_prob(obs_t, actions))
    with pytest.raises(TypeError, match="frozen_reference"):
        AdapterDisabledPolicy(base_policy)


def test_a_lora_ppo_kl_checkpoint_resumes_onto_fresh_adapters(tokenizer, tmp_path):
    import gymnasium as gym

    from agents.ppo_kl import PPOKL, PPOKLConfig
    from agents.text.lm_policy import CausalLMPolicy
    from agents.text.lora import reference_policy_of
    from envs.text import TextTask

    def agent_on(env, checkpoint=None):
        policy = CausalLMPolicy(add_lora(tiny_lm(tokenizer), r=4, alpha=8.0), len(tokenizer))
        ref = reference_policy_of(policy)
        if checkpoint is not None:
            return PPOKL.load_checkpoint(checkpoint, env, policy=policy, ref_policy=ref)
        config = PPOKLConfig(n_steps=12, batch_size=16, n_epochs=2, kl_coef=0.1, seed=0,
                             learning_rate=1e-2)  # fmt: skip
        return PPOKL(env, config, policy=policy, ref_policy=ref)

    def env():
        return gym.vector.SyncVectorEnv(
            [lambda: TextTask("sentiment", tokenizer, ["The plot was"], max_new_tokens=6)] * 4
        )

    live = agent_on(env())
    live.learn(96)
    live.save_checkpoint(tmp_path)
    resumed = agent_on(env(), tmp_path)
    live.learn(48)
    resumed.learn(48)
    for (name, p), q in zip(live.policy.state_dict().items(),
                            resumed.policy.state_dict().values(), strict=True):  # fmt: skip
        torch.testing.assert_close(p, q, msg=name)
