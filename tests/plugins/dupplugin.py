"""A plugin whose method name clashes with the toy plugin's."""

import torch

import interpbench as ib


class Clash(ib.Method):
    name = "toy_noise"

    def explain(self, model, images, targets):
        return torch.zeros(images.shape[0], *images.shape[2:])


@ib.hookimpl
def register_methods():
    return [Clash]
