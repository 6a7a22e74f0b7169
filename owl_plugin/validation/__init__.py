"""Validation suite: do real serving engines load, agree with, and speed up a pruned model?"""
