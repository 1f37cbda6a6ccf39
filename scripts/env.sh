# Sourced by the scripts: the environment Reflex needs on these machines.
export PATH="$PWD/.tools/node_modules/.bin:$PWD/.venv/bin:$PATH"
export REFLEX_USE_SYSTEM_BUN=1
export REFLEX_TELEMETRY_ENABLED=false
export REFLEX_CHECK_LATEST_VERSION=false
# skips Reflex's probe of a registry mirror: use the registry npm already uses
if command -v npm >/dev/null; then
  NPM_CONFIG_REGISTRY="$(npm config get registry)"
  export NPM_CONFIG_REGISTRY
fi
