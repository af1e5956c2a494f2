"""RFFT: reward fine-tuning of the ControlNet with RFNet feedback and the Consistent-Condition regulariser.

Public API::

    rfft.sampling     prepare / sample / rollout / predict_noise / paste_back: the engine's inpainting
                      ControlNet loop, split so one late step carries gradients (equals the engine with
                      gradients off)
    rfft.losses       feedback_loss (-log P(Available)), consistent_condition_loss, kl_loss, total_loss
    rfft.rewards      reward_fn(images, cond) -> (B,): RFNetReward / rfnet_factory (log P(Available)),
                      brightness (toy)
    rfft.config       RFFTConfig
    rfft.train        train_loop_per_worker(config), the Ray Train recipe (imports ray)
    rfft.evaluate     Evaluator: held-out available rate, attempts (1/p and measured), diversity across seeds

Jobs: ``adloop train-rfft`` (``jobs.train_rfft``) and ``adloop eval-generator`` (``jobs.eval_generator``).
The fine-tuned ControlNet reaches the engine only as a diffusers folder (``OUT/controlnet``).
"""
