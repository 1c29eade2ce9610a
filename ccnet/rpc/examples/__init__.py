"""Example RPC services shipped with ccnet and used by the sample configuration."""
