from vla_steer.policies.base import ChunkPolicy, ChunkPolicyConfig, build_chunk_policy, load_chunk_policy

__all__ = ["ChunkPolicy", "ChunkPolicyConfig", "build_chunk_policy", "load_chunk_policy"]
