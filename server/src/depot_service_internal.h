// The gRPC service h5depot.v1.Depot: the gRPC codec over DepotOperations.
// It parses each call's messages, calls one operation and encodes its
// answer; the service's rules (validation, clamps, authorisation, how an
// image is described) are the operations'. Internal to the server.
#ifndef H5DEPOT_SERVER_DEPOT_SERVICE_INTERNAL_H_
#define H5DEPOT_SERVER_DEPOT_SERVICE_INTERNAL_H_

#include <atomic>
#include <cstdint>
#include <string>
#include <utility>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "h5depot/v1/depot.grpc.pb.h"
#include "server/src/depot_operations_internal.h"

namespace h5depot::server {

// Push, Fetch, Read and OpenReader, which move image bytes, use the
// callback API with raw byte buffers: chunks are sent from slices that
// reference the stored image and received straight into the pending one,
// never through a protobuf string. Stat uses the callback API too, so that
// a Stat waiting for its image holds no thread (nor does a waiting Fetch).
// So do the others: every call then ends in a reactor's OnDone, once gRPC
// is done with it, which is what CallGate counts.
// The stream calls, each served by a reactor too.
using DepotStreamServiceBase =
    h5depot::v1::Depot::WithCallbackMethod_CreateStream<
        h5depot::v1::Depot::WithCallbackMethod_FinishStream<
            h5depot::v1::Depot::WithCallbackMethod_StatStream<
                h5depot::v1::Depot::WithCallbackMethod_NextStep<
                    h5depot::v1::Depot::WithCallbackMethod_AckStep<
                        h5depot::v1::Depot::WithCallbackMethod_AwaitStreamRoom<
                            h5depot::v1::Depot::WithCallbackMethod_DeleteStream<
                                h5depot::v1::Depot::Service>>>>>>>;
using DepotServiceBase = h5depot::v1::Depot::WithRawCallbackMethod_Push<
    h5depot::v1::Depot::WithRawCallbackMethod_Fetch<
        h5depot::v1::Depot::WithRawCallbackMethod_Read<
            h5depot::v1::Depot::WithRawCallbackMethod_OpenReader<
                h5depot::v1::Depot::WithCallbackMethod_Stat<
                    h5depot::v1::Depot::WithCallbackMethod_List<
                        h5depot::v1::Depot::WithCallbackMethod_Delete<
                            h5depot::v1::Depot::WithCallbackMethod_GetLimits<
                                h5depot::v1::Depot::WithCallbackMethod_Watch<
                                    DepotStreamServiceBase>>>>>>>>>;

// The calls under way, counted so that a stop can wait for them and no
// longer: gRPC's own Shutdown also waits for every idle connection's
// client to answer its GOAWAY, which an idle client may take seconds to do
// (it reads its socket only when it next polls). Once closed, the gate
// turns new calls away. Thread-safe; entering and leaving cost an atomic
// operation each.
class CallGate {
 public:
  // A call's place in the count, from its handler until gRPC is done with
  // it (its reactor's OnDone). Move-only; leaves when destroyed.
  class Pass {
   public:
    Pass() = default;
    Pass(Pass&& other) noexcept
        : gate_(std::exchange(other.gate_, nullptr)),
          admitted_(other.admitted_) {}
    Pass& operator=(Pass&& other) noexcept {
      if (this != &other) {
        Leave();
        gate_ = std::exchange(other.gate_, nullptr);
        admitted_ = other.admitted_;
      }
      return *this;
    }
    ~Pass() { Leave(); }

    // Whether the call may go ahead; false once the gate is closed, and the
    // call is then to be refused (RefusedStatus()), holding its pass until
    // the refusal is sent.
    bool admitted() const { return admitted_; }

    // Leaves the count now rather than when destroyed. Idempotent.
    void Leave();

   private:
    friend class CallGate;
    Pass(CallGate* gate, bool admitted) : gate_(gate), admitted_(admitted) {}
    CallGate* gate_ = nullptr;
    bool admitted_ = false;
  };

  Pass Enter();

  // Turns every call that enters from now on away.
  void Close();

  // Waits until no call is under way, or until `deadline`; returns whether
  // none is. Call after Close().
  bool AwaitNoCalls(absl::Time deadline);

  // What a call turned away is answered: UNAVAILABLE.
  static grpc::Status RefusedStatus();

 private:
  void Leave();

  // Sequentially consistent: a call that leaves either sees `closed_` and
  // wakes AwaitNoCalls, or AwaitNoCalls sees it gone.
  std::atomic<int64_t> calls_{0};
  std::atomic<bool> closed_{false};
  absl::Mutex mutex_;  // for AwaitNoCalls to sleep on
};

class ServerMetrics;

// One gRPC call's entry in the metrics (--metrics-listen): begun with the
// call, ended once, as its status is sent. Each reactor ends its record
// where it finishes its call, so that counting costs a call two clock
// reads and a few atomic additions, as on the data lane, and no gRPC
// interceptor (whose machinery, an object per call and every batch passed
// through it, cost small pushes 5%). Without metrics it does nothing.
// Used by one thread at a time.
class CallRecord {
 public:
  // `metrics` null: counts nothing.
  CallRecord(ServerMetrics* metrics, Operation op);

  // Bytes of image data the call moves, counted if it ends OK.
  void AddImageBytes(uint64_t bytes) { image_bytes_ += bytes; }

  // Records the call as ended with `status`; later calls do nothing.
  void End(const grpc::Status& status);

 private:
  ServerMetrics* metrics_;  // null once ended, or without metrics
  Operation op_;
  absl::Time start_;
  uint64_t image_bytes_ = 0;
};

// Where the data lane listens, as GetLimits tells clients.
struct DataLaneAddresses {
  int tcp_port = 0;       // 0: no TCP lane
  std::string unix_path;  // empty: no Unix lane
};

class DepotService final : public DepotServiceBase {
 public:
  // `operations` must outlive the service, and `metrics` (null: none),
  // into which every call is counted.
  DepotService(DepotOperations* operations, uint64_t max_chunk_bytes,
               uint64_t send_chunk_bytes, DataLaneAddresses data_lane,
               ServerMetrics* metrics = nullptr);

  grpc::ServerReadReactor<grpc::ByteBuffer>* Push(
      grpc::CallbackServerContext* context,
      grpc::ByteBuffer* response) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* Fetch(
      grpc::CallbackServerContext* context,
      const grpc::ByteBuffer* request) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* Read(
      grpc::CallbackServerContext* context,
      const grpc::ByteBuffer* request) override;
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* OpenReader(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* Stat(grpc::CallbackServerContext* context,
                                 const h5depot::v1::StatRequest* request,
                                 h5depot::v1::ImageInfo* response) override;
  grpc::ServerUnaryReactor* List(grpc::CallbackServerContext* context,
                                 const h5depot::v1::ListRequest* request,
                                 h5depot::v1::ListResponse* response) override;
  grpc::ServerUnaryReactor* Delete(
      grpc::CallbackServerContext* context,
      const h5depot::v1::DeleteRequest* request,
      h5depot::v1::DeleteResponse* response) override;
  grpc::ServerUnaryReactor* GetLimits(
      grpc::CallbackServerContext* context,
      const h5depot::v1::GetLimitsRequest* request,
      h5depot::v1::ServerLimits* response) override;
  grpc::ServerWriteReactor<h5depot::v1::WatchResponse>* Watch(
      grpc::CallbackServerContext* context,
      const h5depot::v1::WatchRequest* request) override;
  grpc::ServerUnaryReactor* CreateStream(
      grpc::CallbackServerContext* context,
      const h5depot::v1::CreateStreamRequest* request,
      h5depot::v1::StreamInfo* response) override;
  grpc::ServerUnaryReactor* FinishStream(
      grpc::CallbackServerContext* context,
      const h5depot::v1::FinishStreamRequest* request,
      h5depot::v1::StreamInfo* response) override;
  grpc::ServerUnaryReactor* StatStream(
      grpc::CallbackServerContext* context,
      const h5depot::v1::StatStreamRequest* request,
      h5depot::v1::StreamInfo* response) override;
  grpc::ServerUnaryReactor* NextStep(
      grpc::CallbackServerContext* context,
      const h5depot::v1::NextStepRequest* request,
      h5depot::v1::NextStepResponse* response) override;
  grpc::ServerUnaryReactor* AckStep(
      grpc::CallbackServerContext* context,
      const h5depot::v1::AckStepRequest* request,
      h5depot::v1::AckStepResponse* response) override;
  grpc::ServerUnaryReactor* AwaitStreamRoom(
      grpc::CallbackServerContext* context,
      const h5depot::v1::AwaitStreamRoomRequest* request,
      h5depot::v1::AwaitStreamRoomResponse* response) override;
  grpc::ServerUnaryReactor* DeleteStream(
      grpc::CallbackServerContext* context,
      const h5depot::v1::DeleteStreamRequest* request,
      h5depot::v1::DeleteStreamResponse* response) override;

  // The stop, in two steps: from Close() on every new call is answered
  // UNAVAILABLE ("server is shutting down"); AwaitCalls() then waits until
  // the calls under way have ended, or until `deadline`, and returns
  // whether they have. A reader stream counts only while it opens or sends
  // a range, not while it merely pins its generation.
  void Close() { gate_.Close(); }
  bool AwaitCalls(absl::Time deadline) { return gate_.AwaitNoCalls(deadline); }

 private:
  CallRecord Record(Operation op) const { return CallRecord(metrics_, op); }

  CallGate gate_;
  DepotOperations* const operations_;
  ServerMetrics* const metrics_;
  const uint64_t max_chunk_bytes_;
  const uint64_t send_chunk_bytes_;
  const DataLaneAddresses data_lane_;
};

}  // namespace h5depot::server

#endif  // H5DEPOT_SERVER_DEPOT_SERVICE_INTERNAL_H_
