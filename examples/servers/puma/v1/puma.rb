# Puma's settings for examples/servers/puma.
# Serve every socket in LISTEN_FDS (and bind nothing else).
bind_to_activated_sockets 'only'
threads 4, 4
