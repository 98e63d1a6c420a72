"""Everything that runs methods: data, evaluation, the Ray Train loop, sweeps, request streams and the CLI."""
