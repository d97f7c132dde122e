"""backend/modules/k_prediction.py stand-in: the discrete eps-prediction schedule of SD1.5/SDXL (`Prediction`: scaled-linear
betas 0.00085 -> 0.012 over 1000 steps) with Forge's methods: sigmas / log_sigmas buffers, timestep(sigma) (nearest
log-sigma index), sigma(timestep) (log-linear interpolation), calculate_input / calculate_denoised / noise_scaling, and
`percent_to_sigma(p)`: p <= 0 -> 999999999.9, p >= 1 -> 0.0, else sigma(timestep=(1-p)*999) -- the model's schedule, not the
fraction of executed steps (forge.md §4). Not modelled: v-prediction, EDM, flow-matching predictors, zero-terminal-SNR."""
import torch


class Prediction(torch.nn.Module):
    def __init__(self, sigma_data=1.0, prediction_type="epsilon", linear_start=0.00085, linear_end=0.012, timesteps=1000):
        super().__init__()
        self.sigma_data = sigma_data
        self.prediction_type = prediction_type
        betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.register_buffer("alphas_cumprod", alphas_cumprod.float())
        self.set_sigmas(sigmas)

    def set_sigmas(self, sigmas):
        self.register_buffer("sigmas", sigmas.float())
        self.register_buffer("log_sigmas", sigmas.log().float())

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def timestep(self, sigma):
        dists = sigma.log().to(self.log_sigmas.device) - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)

    def sigma(self, timestep):
        t = torch.clamp(timestep.float().to(self.log_sigmas.device), min=0, max=len(self.sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp().to(timestep.device)

    def percent_to_sigma(self, percent):
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return self.sigma(torch.tensor((1.0 - percent) * 999.0)).item()

    def calculate_input(self, sigma, noise):
        sigma = sigma.view(sigma.shape[:1] + (1,) * (noise.ndim - 1))
        return noise / (sigma ** 2 + self.sigma_data ** 2) ** 0.5

    def calculate_denoised(self, sigma, model_output, model_input):
        sigma = sigma.view(sigma.shape[:1] + (1,) * (model_output.ndim - 1))
        return model_input - model_output * sigma

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        noise = noise * torch.sqrt(1.0 + sigma ** 2.0) if max_denoise else noise * sigma
        return noise + latent_image

    def inverse_noise_scaling(self, sigma, latent):
        return latent
