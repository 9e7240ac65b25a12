// h5depot::testing::InProcessDepot: a real DepotServer inside the test
// process, listening on a free loopback port and/or a Unix socket in a
// private directory, plus Clients connected to it; shut down with the
// object. For tests of the server and the client together that need no
// separate h5depotd (ServerProcess is that one).
//
// Example:
//   server::ServerOptions options;
//   options.store.require_hdf5 = false;
//   auto depot = InProcessDepot::Start(options, Listeners::kUnix);
//   ASSERT_TRUE(depot.ok()) << depot.status();
//   auto client = (*depot)->Connect();
//   ASSERT_TRUE(client.ok()) << client.status();
#ifndef H5DEPOT_TESTING_IN_PROCESS_DEPOT_H_
#define H5DEPOT_TESTING_IN_PROCESS_DEPOT_H_

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "h5depot/client.h"
#include "h5depot/server/depot_server.h"
#include "h5depot/testing/temp_dir.h"

namespace h5depot::testing {

// Where the server listens. The first listed is target()'s.
enum class Listeners {
  kTcp,         // a free port on 127.0.0.1
  kUnix,        // a Unix socket in a private directory under /tmp
  kTcpAndUnix,  // both
};

class InProcessDepot {
 public:
  // Starts a DepotServer with `options`, whose listen_address and
  // unix_socket_path are replaced by what `listeners` asks for; everything
  // else (limits, data lane, store) is taken as given. Fails as
  // DepotServer::Start does, or if no private directory can be made.
  static absl::StatusOr<std::unique_ptr<InProcessDepot>> Start(
      server::ServerOptions options = {},
      Listeners listeners = Listeners::kTcp);

  // Shuts the server down (Shutdown(), if not done yet) and removes the
  // private directory.
  ~InProcessDepot();
  InProcessDepot(const InProcessDepot&) = delete;
  InProcessDepot& operator=(const InProcessDepot&) = delete;

  // The client target of the first listener ("127.0.0.1:40123" or
  // "unix:/tmp/.../depot.sock").
  const std::string& target() const;
  // The TCP and the Unix socket target; empty if there is no such listener.
  std::string tcp_target() const;
  std::string unix_target() const;

  // A new Client of target().
  absl::StatusOr<std::unique_ptr<Client>> Connect(
      const ClientOptions& options = {}) const;

  server::DepotServer& server() { return *server_; }
  server::ImageStore& store() { return server_->store(); }

  // DepotServer::Shutdown: ends waits with UNAVAILABLE, lets calls under
  // way finish for up to `grace`. Idempotent.
  void Shutdown(absl::Duration grace = absl::Seconds(1));

 private:
  InProcessDepot(std::optional<TempDir> dir,
                 std::unique_ptr<server::DepotServer> server);

  std::optional<TempDir> dir_;  // holds the Unix socket, if any
  std::unique_ptr<server::DepotServer> server_;
};

}  // namespace h5depot::testing

#endif  // H5DEPOT_TESTING_IN_PROCESS_DEPOT_H_
