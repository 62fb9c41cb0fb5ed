"""SEED-X Nano: the staged, resumable, deterministic training pipeline (issue 4).

One command trains every component of a small SEED-X from scratch on the procedural world of
``seedx_nano.world`` / ``seedx_nano.tasks``, following SEED-X's recipe at small scale::

    python -m seedx_nano.train --out runs/nano            # everything (6 h defaults)
    python -m seedx_nano.train --out runs/nano --smoke    # a few steps of every stage
    python -m seedx_nano.train --out runs/nano --stages vit,vae --steps vit=500

Stages, in order (see docs/nano.md for what each does and how long it takes):

``data``      render scenes and task examples (uint8 views, token ids), train the tokenizer
``vit``       the ViT visual tokenizer, with dense per-cell colour/shape/pixel targets; then frozen
``vae``       the f=4 AutoencoderKL; its latent scaling factor is measured at the end
``features``  cache frozen-ViT features and VAE latents for everything that follows
``llm``       ContinuousLVLM pre-training: next-token loss + 6 x MSE feature regression
``detok1``    de-tokenizer stage 1: ResamplerXLV2 -> UNet cross-attention + pooled/time embeds
``detok2``    de-tokenizer stage 2: 8-channel conv_in (from stage 1), condition latent = source
``lora``      peft LoRA adapters per variant on the pre-trained LLM
``export``    the shipped tree: `SeedXStack.save_pretrained` layout + ``adapters/<variant>/``

The modules, in the order a run uses them: `plan` (sizes, steps, budgets), `run` (the run
directory), `checkpoint` (what is saved and how it is read back), `loop` (the resumable training
loop), `pixels`, `data`, `vit`, `vae`, `features`, `llm`, `detokenizer`, `lora`, `export`,
`pipeline` (stages in order, the parallel lanes) and `__main__` (the command line).

A run directory written before the Nano moved into this plugin (``python -m core_models.nano.train``)
has the same layout and stage names, and resumes here: see `checkpoint` for how its checkpoints
are read. Importing this package is cheap; the stages import torch when they run.
"""
