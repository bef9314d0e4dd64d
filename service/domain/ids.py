import secrets


def new_id(prefix: str) -> str:
    """A public id such as ds_3f2a...; random so ids reveal nothing about volume."""
    return f"{prefix}_{secrets.token_hex(12)}"
