defmodule DQNBridge.Env.CartPole do
  @moduledoc """
  CartPole-v1 in pure Elixir, following gymnasium's `CartPoleEnv` step for step.

  Same constants, the same explicit-Euler update in double precision, the same
  termination thresholds (|x| > 2.4, |theta| > 12 degrees), reward 1.0 on every
  step, and the `TimeLimit` truncation of CartPole-v1 after 500 steps. The start
  state is drawn uniformly from [-0.05, 0.05) with the env's own `:rand` state
  (seeded by `reset/2`), so start states differ from gymnasium's for the same
  seed; pass `state:` to `new/1` to start from a given state instead.

  A step costs well under a microsecond, which is why the Elixir loop can
  step many of these in one agent call (see `DQNBridge.Env.Vector`).

      iex> env = DQNBridge.Env.CartPole.new(state: [0.0, 0.0, 0.0, 0.0])
      iex> {[x, x_dot, _theta, _theta_dot], 1.0, false, false, _env} = DQNBridge.Env.step(env, 1)
      iex> {x, Float.round(x_dot, 6)}
      {0.0, 0.195122}
  """

  @behaviour DQNBridge.Env

  @gravity 9.8
  @masscart 1.0
  @masspole 0.1
  @total_mass @masspole + @masscart
  @length 0.5
  @polemass_length @masspole * @length
  @force_mag 10.0
  @tau 0.02
  @theta_threshold 12 * 2 * :math.pi() / 360
  @x_threshold 2.4
  @max_episode_steps 500

  @enforce_keys [:state]
  defstruct state: nil, steps: 0, rand: nil, max_episode_steps: @max_episode_steps

  @typedoc "The physical state `[x, x_dot, theta, theta_dot]`, steps taken in this episode, and the RNG."
  @type t :: %__MODULE__{
          state: [float()] | nil,
          steps: non_neg_integer(),
          rand: :rand.state() | nil,
          max_episode_steps: pos_integer()
        }

  @doc """
  A new CartPole.

  ## Options
    * `:state` - start from this `[x, x_dot, theta, theta_dot]` (as if reset had drawn it)
    * `:seed` - seed the env's RNG now (otherwise the first `reset/2` seeds it)
    * `:max_episode_steps` - truncation length (default #{@max_episode_steps})
  """
  @spec new(keyword()) :: t()
  def new(opts \\ []) do
    opts = Keyword.validate!(opts, [:state, :seed, max_episode_steps: @max_episode_steps])
    rand = if seed = opts[:seed], do: seed_rand(seed)
    state = if s = opts[:state], do: Enum.map(s, &(&1 * 1.0))
    %__MODULE__{state: state, rand: rand, max_episode_steps: opts[:max_episode_steps]}
  end

  @impl true
  def reset(%__MODULE__{} = env, seed) do
    rand = if seed, do: seed_rand(seed), else: env.rand || seed_rand(:erlang.unique_integer())

    {state, rand} =
      Enum.map_reduce(1..4, rand, fn _, r ->
        {u, r} = :rand.uniform_s(r)
        # uniform_s is in (0, 1]; map it onto [-0.05, 0.05) like numpy's uniform
        {0.05 - 0.1 * u, r}
      end)

    {state, %{env | state: state, steps: 0, rand: rand}}
  end

  @impl true
  def step(%__MODULE__{state: [x, x_dot, theta, theta_dot], steps: steps} = env, action)
      when action in [0, 1] do
    force = if action == 1, do: @force_mag, else: -@force_mag
    costheta = :math.cos(theta)
    sintheta = :math.sin(theta)

    # parenthesised as gymnasium's np.square, so the rounding is the same
    temp = (force + @polemass_length * (theta_dot * theta_dot) * sintheta) / @total_mass

    thetaacc =
      (@gravity * sintheta - costheta * temp) /
        (@length * (4.0 / 3.0 - @masspole * (costheta * costheta) / @total_mass))

    xacc = temp - @polemass_length * thetaacc * costheta / @total_mass

    x = x + @tau * x_dot
    x_dot = x_dot + @tau * xacc
    theta = theta + @tau * theta_dot
    theta_dot = theta_dot + @tau * thetaacc

    terminated =
      x < -@x_threshold or x > @x_threshold or theta < -@theta_threshold or
        theta > @theta_threshold

    steps = steps + 1
    state = [x, x_dot, theta, theta_dot]

    {state, 1.0, terminated, steps >= env.max_episode_steps, %{env | state: state, steps: steps}}
  end

  def step(%__MODULE__{state: nil}, _action) do
    raise ArgumentError, "CartPole: call reset/2 (or give new/1 a :state) before step/2"
  end

  def step(%__MODULE__{}, action) do
    raise ArgumentError, "CartPole: action must be 0 or 1, got: #{inspect(action)}"
  end

  @impl true
  def spec(%__MODULE__{} = env) do
    %{id: "CartPole-v1", obs_dim: 4, n_actions: 2, max_episode_steps: env.max_episode_steps}
  end

  @impl true
  def clone(%__MODULE__{} = env), do: new(max_episode_steps: env.max_episode_steps)

  defp seed_rand(seed), do: :rand.seed_s(:exsss, seed)
end
