"""The semi-supervised M2 trained the way Pyro's ss-vae tutorial trains it: plain ``pyro.infer.SVI``
with ``TraceEnum_ELBO``, unlabelled and labelled batches in alternation, and the auxiliary loss
as a second SVI on ``m2.classify_model``; then the classifier's test accuracy.

    python examples/semi_supervised.py                 # the digits, 50 labels, 100 epochs
    python examples/semi_supervised.py --labeled 100 --epochs 30

``pyro_vae.train(m2, data, labeled=N)`` (and ``pyro-vae train --model m2``) trains the same model
with mixed batches and one optimizer; this script is the textbook loop, to read beside it.
"""

from __future__ import annotations

import argparse

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO

import pyro_vae
from pyro_vae.data.sources import TEST_BINARIZATION_SEED, binarize, binarize_afresh, labeled_split
from pyro_vae.models.labels import one_hot
from pyro_vae.models.m2 import accuracy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--labeled", type=int, default=50, help="training examples with their label")
    p.add_argument("--epochs", type=int, default=100, help="passes over the unlabelled examples")
    p.add_argument("--batch-size", type=int, default=64, help="examples per SVI step")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=0, help="seeds the weights, labels and draws")
    args = p.parse_args()

    data = pyro_vae.load_dataset("digits")
    labeled, unlabeled = labeled_split(data.y_train, args.labeled, 10, args.seed)
    x_labeled, y_labeled = data.x_train[labeled], one_hot(data.y_train[labeled], 10, data.x_train)
    x_unlabeled = data.x_train[unlabeled]
    x_test = binarize(data.x_test, TEST_BINARIZATION_SEED)

    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    m2 = pyro_vae.M2(data.x_shape, num_classes=10, z_dim=8, hidden_dims=(128,))
    optimizer = pyro.optim.Adam({"lr": args.lr})
    # max_plate_nesting=1: the data plate; enumeration takes the dimension to its left. The
    # labelled program has nothing to enumerate: Trace_ELBO, the same value, without a warning
    unlabelled = SVI(m2.model, m2.guide, optimizer, loss=TraceEnum_ELBO(max_plate_nesting=1))
    labelled = SVI(m2.model, m2.guide, optimizer, loss=Trace_ELBO())
    aux = SVI(m2.classify_model, m2.classify_guide, optimizer, loss=Trace_ELBO())

    # as in the tutorial: each epoch walks the unlabelled batches and slips a labelled batch in
    # every `period` steps, so that the labelled examples are also seen once an epoch
    unlabeled_batches = -(-len(x_unlabeled) // args.batch_size)
    labeled_batches = -(-len(x_labeled) // args.batch_size)
    period = max(1, unlabeled_batches // labeled_batches)
    for epoch in range(1, args.epochs + 1):
        order = torch.randperm(len(x_unlabeled))
        labeled_order = torch.randperm(len(x_labeled)).split(args.batch_size)
        loss = 0.0
        for i, index in enumerate(order.split(args.batch_size)):
            loss += unlabelled.step(binarize_afresh(x_unlabeled[index]))  # y summed out
            if i % period == 0 and i // period < len(labeled_order):
                chosen = labeled_order[i // period]
                x, y = binarize_afresh(x_labeled[chosen]), y_labeled[chosen]
                loss += labelled.step(x, y) + aux.step(x, y)  # y observed, and log q(y|x)
        if epoch % max(1, args.epochs // 5) == 0 or epoch == args.epochs:
            test_accuracy = accuracy(m2, x_test, data.y_test)
            print(
                f"epoch {epoch}: loss {loss / len(data.x_train):.2f} per example, "
                f"test accuracy {test_accuracy:.3f}"
            )


if __name__ == "__main__":
    main()
