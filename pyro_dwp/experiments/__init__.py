"""The papers' experiments, reusable from Python and notebooks: recipes (networks, priors,
guides, ELBOs), training runs, evaluation, tables and figures. The command-line jobs
(:mod:`pyro_dwp.jobs`) are thin adapters over these modules.

One module per experiment (``regression``, ``mnist``, ``prune``, ``mushroom``, ``dwp_source``,
``dwp_prior``, ``dwp_classify``, ``dwp_gap``, ``dwp_pipeline``), plus ``dwp_bnn`` (the DWP
ConvNet's model, guide and ELBO per prior), ``bandits`` (the contextual-bandit agents) and
``bandit_lockstep`` (those agents over several seeds as one batched network, a step a CUDA graph).
"""
