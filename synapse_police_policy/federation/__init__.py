"""Closed federation: which servers our users may talk to, who may join from where."""
