from vla_steer.steering.networks import (
    ACTING_RULES,
    ActingRule,
    CriticEnsemble,
    FeatureEncoder,
    ResidualPerturbation,
    TanhGaussianLatentPolicy,
    act_residual,
    act_tanh_gaussian,
    build_latent_critic,
    mlp,
    residual_latent,
)

__all__ = ["ACTING_RULES", "ActingRule", "CriticEnsemble", "FeatureEncoder", "ResidualPerturbation",
           "TanhGaussianLatentPolicy", "act_residual", "act_tanh_gaussian", "build_latent_critic", "mlp",
           "residual_latent"]
