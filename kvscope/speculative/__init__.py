"""Speculative decoding: proposers that draft tokens for the target model to verify."""
