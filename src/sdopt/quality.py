"""Image quality of an artifact's output against the reference's, same prompt and seed."""

from __future__ import annotations

import numpy as np

PSNR_CAP_DB = 100.0  # identical images have infinite PSNR; JSON has no inf, so a report caps it here


def psnr_db(reference: np.ndarray, image: np.ndarray) -> float:
    """Peak signal-to-noise ratio of uint8 images, in dB (inf when identical)."""
    mse = float(((reference.astype(np.float64) - image.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def ssim(reference: np.ndarray, image: np.ndarray) -> float:
    """Structural similarity (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5, on luma.

    The constants are the paper's (K1=0.01, K2=0.03, L=255), as scikit-image
    uses with gaussian_weights=True.
    """
    from scipy.ndimage import gaussian_filter

    def luma(img):
        img = img.astype(np.float64)
        return img @ np.array([0.299, 0.587, 0.114]) if img.ndim == 3 else img

    x, y = luma(reference), luma(image)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    blur = lambda a: gaussian_filter(a, sigma=1.5, truncate=3.5)  # noqa: E731  (radius 5: an 11x11 window)
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(s.mean())


def latent_cosine(reference: np.ndarray, latents: np.ndarray) -> float:
    a, b = reference.astype(np.float64).ravel(), latents.astype(np.float64).ravel()
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom else 0.0


def max_abs_pixel_error(reference: np.ndarray, image: np.ndarray) -> int:
    return int(np.abs(reference.astype(np.int16) - image.astype(np.int16)).max())


def compare(reference_images, images, reference_latents, latents) -> dict[str, float]:
    """Quality over matching lists of (uint8 HWC image, latents): worst PSNR/SSIM, mean as well."""
    psnrs = [psnr_db(r, i) for r, i in zip(reference_images, images)]
    ssims = [ssim(r, i) for r, i in zip(reference_images, images)]
    return {
        "psnr_db": min(psnrs),
        # Identical images count at the cap: left out, the mean of two identical images and two at 86 dB read 86 dB.
        "psnr_db_mean": float(np.mean(np.minimum(psnrs, PSNR_CAP_DB))),
        "ssim": min(ssims),
        "ssim_mean": float(np.mean(ssims)),
        "max_abs_pixel_error": max(max_abs_pixel_error(r, i) for r, i in zip(reference_images, images)),
        "latent_cosine": min(latent_cosine(r, i) for r, i in zip(reference_latents, latents)),
    }
