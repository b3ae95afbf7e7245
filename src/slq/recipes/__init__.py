"""Recipes: complete runs built on the library — `make demo`, `make evidence`, `make mmeb`, and the
pretraining of slq-tiny-vl. Nothing in the method or in evaluation imports them."""
