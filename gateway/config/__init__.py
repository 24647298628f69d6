"""Config: load the YAML file (``${ENV}``, includes, line tracking), validate it with pydantic, explain
errors in a technician's words; the last good copy; secrets.
"""
