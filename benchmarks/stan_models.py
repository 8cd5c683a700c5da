"""The benchmark's peer: the same hierarchical models, priors and data written in Stan.

Both models mirror pkpd.fit's defaults: mu_k ~ N(log prior median, prior sd), omega_k ~
HalfNormal(max(0.5, 2 * default IIV)), z ~ N(0, 1) non-centred, sigma ~ LogNormal(log default, 0.5),
log-normal residual error with M3 censoring below the LLOQ (normal_lcdf on the log scale).
"""

MULTIPHASIC = r"""
data {
  int<lower=1> N;                 // subjects
  int<lower=1> M;                 // records
  array[M] int<lower=1, upper=N> subject;
  vector[M] time;
  vector[M] y;                    // value (the LLOQ when censored)
  array[M] int<lower=0, upper=1> censored;
  vector[6] prior_mu;
  vector<lower=0>[6] prior_sd;
  vector<lower=0>[6] omega_scale;
  real<lower=0> sigma_default;
}
parameters {
  vector[6] mu;                   // log cmax, tmax, foldx, alpha, fb, beta
  vector<lower=0>[6] omega;
  matrix[N, 6] z;
  real<lower=0> sigma;
}
model {
  mu ~ normal(prior_mu, prior_sd);
  omega ~ normal(0, omega_scale);
  to_vector(z) ~ std_normal();
  sigma ~ lognormal(log(sigma_default), 0.5);
  {
    matrix[N, 6] theta = exp(rep_matrix(mu', N) + z .* rep_matrix(omega', N));
    for (m in 1:M) {
      row_vector[6] p = theta[subject[m]];
      real t = time[m];
      real level;
      if (t < 0) {
        level = 1e-300;
      } else if (t < p[2]) {
        level = p[1] / p[3] * exp(log(p[3]) / p[2] * t);
      } else {
        real tau = t - p[2];
        level = p[1] * exp(-p[4] * tau) + p[1] * p[5] * (exp(-p[6] * tau) - exp(-p[4] * tau));
      }
      if (censored[m] == 1) {
        target += normal_lcdf(log(y[m]) | log(level), sigma);
      } else {
        target += normal_lpdf(log(y[m]) | log(level), sigma) - log(y[m]);
      }
    }
  }
}
"""

ANTIGEN_DRIVEN = r"""
functions {
  vector rhs(real t, vector s, vector p, vector k, real ld) {
    // p: rho, alpha, fblood, b0, kkills, ks (estimated); k: fixed constants
    // k: kb, kem, beta, kexh, kout, kkill, sin, eld, sld
    vector[4] ds;
    real expansion = p[1] * exp(-k[4] * t) * s[3] / (s[3] + k[1]);
    ds[1] = (expansion - p[2] - k[2]) * s[1];
    ds[2] = k[2] * s[1] - k[3] * s[2];
    ds[3] = k[5] * p[4] * s[4] - k[5] * s[3] - k[6] * s[1] * s[3];
    ds[4] = p[6] * (s[4] + k[7]) * (1 - s[4]) - p[5] * s[1] * s[4];
    return ds;
  }
}
data {
  int<lower=1> N;
  int<lower=1> M;                 // records (sorted by subject, then time)
  array[N] int<lower=1> start;    // first record of each subject
  array[N] int<lower=0> count;    // records of each subject
  array[M] int<lower=1, upper=2> analyte;   // 1 transgene, 2 B cells
  vector[M] time;
  vector[M] y;
  array[M] int<lower=0, upper=1> censored;
  vector[N] dose;
  vector[N] ld;
  vector[9] k;
  real scale;
  vector[6] prior_mu;
  vector<lower=0>[6] prior_sd;
  vector<lower=0>[6] omega_scale;
  vector<lower=0>[2] sigma_default;
  real<lower=0> rtol;
  real<lower=0> atol;
}
parameters {
  vector[6] mu;
  vector<lower=0>[6] omega;
  matrix[N, 6] z;
  vector<lower=0>[2] sigma;
}
model {
  mu ~ normal(prior_mu, prior_sd);
  omega ~ normal(0, omega_scale);
  to_vector(z) ~ std_normal();
  sigma ~ lognormal(log(sigma_default), 0.5);
  for (i in 1:N) {
    vector[6] p = exp(mu + omega .* z[i]');
    vector[4] y0 = [p[3] * (1 + (k[8] - 1) * ld[i]) * dose[i] / 5e6, 0, p[4], 1 - k[9] * ld[i]]';
    // baseline records (t < 0) sit at the pre-infusion state; the ODE starts at t = 0
    int first_post = start[i];
    while (first_post < start[i] + count[i] && time[first_post] < 0) first_post += 1;
    int n_post = start[i] + count[i] - first_post;
    array[n_post] vector[4] states;
    if (n_post > 0) {
      // ode_rk45 needs strictly later times than t0: records at t = 0 use y0
      int n_zero = 0;
      while (n_zero < n_post && time[first_post + n_zero] <= 0) n_zero += 1;
      for (j in 1:n_zero) states[j] = y0;
      if (n_post > n_zero) {
        array[n_post - n_zero] real ts = to_array_1d(time[(first_post + n_zero):(start[i] + count[i] - 1)]);
        array[n_post - n_zero] vector[4] sol = ode_rk45_tol(rhs, y0, 0.0, ts, rtol, atol, 100000, p, k, ld[i]);
        for (j in 1:(n_post - n_zero)) states[n_zero + j] = sol[j];
      }
    }
    for (m in start[i]:(start[i] + count[i] - 1)) {
      real level;
      if (m < first_post) {
        level = analyte[m] == 1 ? 1e-300 : p[4];
      } else {
        vector[4] s = states[m - first_post + 1];
        level = analyte[m] == 1 ? scale * (s[1] + s[2]) : s[3];
      }
      level = fmax(level, 1e-300);
      if (censored[m] == 1) {
        target += normal_lcdf(log(y[m]) | log(level), sigma[analyte[m]]);
      } else {
        target += normal_lpdf(log(y[m]) | log(level), sigma[analyte[m]]) - log(y[m]);
      }
    }
  }
}
"""
