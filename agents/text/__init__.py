"""Text agents: a causal LM as a policy and the LM training stages of text RLHF.

- :mod:`agents.text.lm_policy`: :class:`~agents.text.lm_policy.CausalLMPolicy`, a Hugging Face
  causal LM as a PPO-KL policy with KV-cached rollouts (:mod:`agents.text.kv_cache`), and its
  frozen reference.
- :mod:`agents.text.optim`: :class:`~agents.text.optim.LMOptimConfig` and the optimisation loop
  SFT and DPO share (AdamW, warm-up, clipping, batches).
- :mod:`agents.text.sft`: supervised fine-tuning on (prompt, completion) demonstrations.
- :mod:`agents.text.pairs` / :mod:`agents.text.dpo`: preference pairs and direct preference
  optimisation from them; the DPO family's losses (IPO, SimPO, robust DPO, KTO) are
  :mod:`agents.text.dpo_losses`, one step of each :mod:`agents.text.dpo_steps`, KTO's unpaired
  examples :mod:`agents.text.unpaired`.
- :mod:`agents.text.iterative_dpo`: sample, label with any teacher, DPO again.
- :mod:`agents.text.sampling`: sampling completions in the text env's prompt layout, and their
  log-probabilities (for KL estimates).

Nothing is imported here, so ``import agents.text`` needs neither torch nor transformers.
"""
