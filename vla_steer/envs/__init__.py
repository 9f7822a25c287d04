from vla_steer.envs.registry import ActionChunk, make_env, validate_env_id

__all__ = ["ActionChunk", "make_env", "validate_env_id"]
