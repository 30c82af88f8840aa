# examples/servers/puma: the Rack app.
run lambda { |env|
  body = env['PATH_INFO'] == '/healthz' ? "ok\n" :
    "hello from v2 release=#{ENV['BG_RELEASE']} color=#{ENV['BG_COLOR']} pid=#{Process.pid}\n"
  headers = { 'content-type' => 'text/plain', 'content-length' => body.bytesize.to_s }
  # One response in 100, at random, ends its keep-alive connection, so after
  # a release the old color's connections end on their own within drain_delay.
  headers['connection'] = 'close' if rand(100).zero?
  [200, headers, [body]]
}
