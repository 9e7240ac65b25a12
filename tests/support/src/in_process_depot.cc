#include "h5depot/testing/in_process_depot.h"

#include <utility>

#include "absl/strings/match.h"

namespace h5depot::testing {

absl::StatusOr<std::unique_ptr<InProcessDepot>> InProcessDepot::Start(
    server::ServerOptions options, Listeners listeners) {
  std::optional<TempDir> dir;
  options.listen_address = "";
  options.unix_socket_path = "";
  if (listeners != Listeners::kUnix) options.listen_address = "127.0.0.1:0";
  if (listeners != Listeners::kTcp) {
    // Under /tmp, not $TMPDIR: a socket address holds a short path only.
    absl::StatusOr<TempDir> created = TempDir::Create("/tmp");
    if (!created.ok()) return created.status();
    dir.emplace(*std::move(created));
    options.unix_socket_path = dir->File("depot.sock");
  }
  absl::StatusOr<std::unique_ptr<server::DepotServer>> server =
      server::DepotServer::Start(options);
  if (!server.ok()) return server.status();
  return std::unique_ptr<InProcessDepot>(
      new InProcessDepot(std::move(dir), *std::move(server)));
}

InProcessDepot::InProcessDepot(std::optional<TempDir> dir,
                               std::unique_ptr<server::DepotServer> server)
    : dir_(std::move(dir)), server_(std::move(server)) {}

InProcessDepot::~InProcessDepot() {
  Shutdown();
  server_.reset();  // before the directory holding its socket goes
}

const std::string& InProcessDepot::target() const {
  return server_->targets().front();
}

std::string InProcessDepot::tcp_target() const {
  for (const std::string& target : server_->targets()) {
    if (!absl::StartsWith(target, "unix:")) return target;
  }
  return "";
}

std::string InProcessDepot::unix_target() const {
  for (const std::string& target : server_->targets()) {
    if (absl::StartsWith(target, "unix:")) return target;
  }
  return "";
}

absl::StatusOr<std::unique_ptr<Client>> InProcessDepot::Connect(
    const ClientOptions& options) const {
  return Client::Connect(target(), options);
}

void InProcessDepot::Shutdown(absl::Duration grace) {
  server_->Shutdown(grace);
}

}  // namespace h5depot::testing
