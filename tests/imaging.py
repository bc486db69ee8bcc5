"""Image comparison used by backend tests: the bench's own PSNR, on PIL images or arrays."""

import numpy as np

from sdopt.quality import psnr_db


def psnr(a, b) -> float:
    return psnr_db(np.asarray(a), np.asarray(b))
