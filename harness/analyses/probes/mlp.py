"""The optional non-linear probe: a small MLP (two hidden layers, GELU) trained with AdamW on MSE of
standardised targets, early-stopped on validation loss (the best epoch's weights are kept)."""

from __future__ import annotations

import numpy as np

from .ridge import Standardizer


class MLPProbe:
    def __init__(self, hidden: int = 256, lr: float = 1e-3, weight_decay: float = 1e-4, batch_size: int = 256,
                 max_epochs: int = 200, patience: int = 15, seed: int = 0):
        self.hidden, self.lr, self.weight_decay = hidden, lr, weight_decay
        self.batch_size, self.max_epochs, self.patience, self.seed = batch_size, max_epochs, patience, seed
        self.best_epoch: int | None = None

    def fit(self, x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray) -> MLPProbe:
        import torch
        from torch import nn

        self.xs, self.ys = Standardizer.fit(np.asarray(x, np.float64)), Standardizer.fit(np.asarray(y, np.float64))
        xt = torch.as_tensor(self.xs(x), dtype=torch.float32)
        yt = torch.as_tensor(self.ys(y), dtype=torch.float32)
        xv = torch.as_tensor(self.xs(x_val), dtype=torch.float32)
        yv = torch.as_tensor(self.ys(y_val), dtype=torch.float32)
        gen = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.net = nn.Sequential(nn.Linear(xt.shape[1], self.hidden), nn.GELU(),
                                     nn.Linear(self.hidden, self.hidden), nn.GELU(),
                                     nn.Linear(self.hidden, yt.shape[1]))
        opt = torch.optim.AdamW(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        best, best_state, waited = float("inf"), None, 0
        for epoch in range(self.max_epochs):
            self.net.train()
            for idx in torch.randperm(len(xt), generator=gen).split(self.batch_size):
                loss = nn.functional.mse_loss(self.net(xt[idx]), yt[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            self.net.eval()
            with torch.no_grad():
                val = float(nn.functional.mse_loss(self.net(xv), yv)) if len(xv) else float(loss)
            if val < best - 1e-6:
                best, waited, self.best_epoch = val, 0, epoch
                best_state = {k: v.clone() for k, v in self.net.state_dict().items()}
            else:
                waited += 1
                if waited >= self.patience:
                    break
        if best_state is not None:
            self.net.load_state_dict(best_state)
        self.net.eval()
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            out = self.net(torch.as_tensor(self.xs(np.asarray(x, np.float64)), dtype=torch.float32)).numpy()
        return out * self.ys.std + self.ys.mean
