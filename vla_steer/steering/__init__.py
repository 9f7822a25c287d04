from vla_steer.steering.networks import (
    CriticEnsemble,
    FeatureEncoder,
    ResidualPerturbation,
    TanhGaussianLatentPolicy,
    mlp,
)

__all__ = ["CriticEnsemble", "FeatureEncoder", "ResidualPerturbation", "TanhGaussianLatentPolicy", "mlp"]
