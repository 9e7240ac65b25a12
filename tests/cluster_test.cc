// Cluster targets: three real h5depotd on loopback behind one
// "cluster:..." target, images placed by the client, replicated, found
// after a server is killed or added; the remote driver through one; and
// the placement rule itself, simulated over 100,000 ids.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "H5FDremote.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/src/cluster_internal.h"
#include "gtest/gtest.h"
#include "h5depot/client.h"
#include "h5depot/testing/hdf5_images.h"
#include "h5depot/testing/server_process.h"
#include "h5depot/testing/subprocess.h"
#include "h5depot/testing/temp_dir.h"
#include "hdf5.h"
#include "hdf5_hl.h"

namespace h5depot {
namespace {

using ::h5depot::internal::ClusterTarget;
using ::h5depot::internal::ParseClusterTarget;
using ::h5depot::internal::PlacementOrder;
using ::h5depot::internal::RendezvousSeed;
using ::h5depot::testing::MakeHdf5Image;
using ::h5depot::testing::ServerProcess;

// A DNS server on 127.0.0.1 for one SRV name: it answers that name's SRV
// queries with the records it is given (which may change while it runs)
// and every other query with NXDOMAIN, over UDP, as a Kubernetes headless
// Service's DNS does for a StatefulSet.
class SrvNameServer {
 public:
  explicit SrvNameServer(std::string name) : name_(std::move(name)) {
    socket_ = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(socket_, reinterpret_cast<const sockaddr*>(&address),
                     sizeof(address)),
              0);
    socklen_t length = sizeof(address);
    ::getsockname(socket_, reinterpret_cast<sockaddr*>(&address), &length);
    port_ = ntohs(address.sin_port);
    EXPECT_EQ(::pipe2(stop_, O_CLOEXEC), 0);
    thread_ = std::thread([this] { Serve(); });
  }
  ~SrvNameServer() {
    EXPECT_EQ(::write(stop_[1], "x", 1), 1);
    thread_.join();
    ::close(socket_);
    ::close(stop_[0]);
    ::close(stop_[1]);
  }

  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }

  // The records answered from now on: each a target host and port.
  void SetRecords(std::vector<std::pair<std::string, int>> records) {
    absl::MutexLock lock(&mutex_);
    records_ = std::move(records);
  }

 private:
  static void Put16(std::string* out, int value) {
    out->push_back(static_cast<char>((value >> 8) & 0xff));
    out->push_back(static_cast<char>(value & 0xff));
  }
  static void PutName(std::string* out, const std::string& name) {
    for (absl::string_view label : absl::StrSplit(name, '.')) {
      out->push_back(static_cast<char>(label.size()));
      out->append(label.data(), label.size());
    }
    out->push_back('\0');
  }

  void Serve() {
    while (true) {
      pollfd waits[2] = {{socket_, POLLIN, 0}, {stop_[0], POLLIN, 0}};
      if (::poll(waits, 2, -1) < 0 || waits[1].revents != 0) return;
      char query[512];
      sockaddr_in peer{};
      socklen_t peer_length = sizeof(peer);
      const ssize_t got =
          ::recvfrom(socket_, query, sizeof(query), 0,
                     reinterpret_cast<sockaddr*>(&peer), &peer_length);
      if (got < 17) continue;
      // The question: labels from byte 12, then type and class.
      std::string asked;
      size_t at = 12;
      while (at < static_cast<size_t>(got) && query[at] != 0) {
        const size_t label = static_cast<unsigned char>(query[at]);
        if (!asked.empty()) asked.push_back('.');
        asked.append(query + at + 1, label);
        at += label + 1;
      }
      const size_t question_end = at + 5;
      if (question_end > static_cast<size_t>(got)) continue;
      const int type = (static_cast<unsigned char>(query[at + 1]) << 8) |
                       static_cast<unsigned char>(query[at + 2]);
      std::vector<std::pair<std::string, int>> records;
      if (asked == name_ && type == 33) {
        absl::MutexLock lock(&mutex_);
        records = records_;
      }
      std::string answer(query, 2);  // the query's id
      const bool known = asked == name_;
      Put16(&answer, known ? 0x8180 : 0x8183);  // an answer; NXDOMAIN
      Put16(&answer, 1);
      Put16(&answer, static_cast<int>(records.size()));
      Put16(&answer, 0);
      Put16(&answer, 0);
      answer.append(query + 12, question_end - 12);
      for (const auto& [host, port] : records) {
        std::string data;
        Put16(&data, 0);  // priority
        Put16(&data, 0);  // weight
        Put16(&data, port);
        PutName(&data, host);
        Put16(&answer, 0xc00c);  // the question's name
        Put16(&answer, 33);      // SRV
        Put16(&answer, 1);       // IN
        Put16(&answer, 0);
        Put16(&answer, 5);  // TTL
        Put16(&answer, static_cast<int>(data.size()));
        answer += data;
      }
      ::sendto(socket_, answer.data(), answer.size(), 0,
               reinterpret_cast<const sockaddr*>(&peer), peer_length);
    }
  }

  const std::string name_;
  int socket_ = -1;
  int port_ = 0;
  int stop_[2] = {-1, -1};
  absl::Mutex mutex_;
  std::vector<std::pair<std::string, int>> records_ ABSL_GUARDED_BY(mutex_);
  std::thread thread_;
};

TEST(ClusterTargetTest, ListsMembersAndReplicas) {
  absl::StatusOr<ClusterTarget> target =
      ParseClusterTarget("cluster:a:7878,b.example:7878,unix:/run/c.sock");
  ASSERT_TRUE(target.ok()) << target.status();
  EXPECT_EQ(target->members,
            (std::vector<std::string>{"a:7878", "b.example:7878",
                                      "unix:/run/c.sock"}));
  EXPECT_EQ(target->replicas, 1);
  target = ParseClusterTarget(
      "cluster+srv://10.0.0.10:53/_grpc._tcp.h5depot?replicas=2&refresh=5s");
  ASSERT_TRUE(target.ok()) << target.status();
  EXPECT_EQ(target->srv_name, "_grpc._tcp.h5depot");
  EXPECT_EQ(target->dns_server, "10.0.0.10:53");
  EXPECT_EQ(target->refresh, absl::Seconds(5));
  EXPECT_EQ(target->replicas, 2);
  target = ParseClusterTarget("cluster:a:1,b:1?replicas=2");
  ASSERT_TRUE(target.ok()) << target.status();
  EXPECT_EQ(target->replicas, 2);
  // A StatefulSet's pods, by range.
  target = ParseClusterTarget("cluster:h5depot-{0..2}.h5depot.ns.svc:7878,x:1");
  ASSERT_TRUE(target.ok()) << target.status();
  EXPECT_EQ(target->members,
            (std::vector<std::string>{"h5depot-0.h5depot.ns.svc:7878",
                                      "h5depot-1.h5depot.ns.svc:7878",
                                      "h5depot-2.h5depot.ns.svc:7878", "x:1"}));
}

TEST(ClusterTargetTest, RefusesMalformedTargetsBeforeConnecting) {
  for (const char* bad :
       {"cluster:", "cluster:a:1,,b:1", "cluster:a:1,a:1", "cluster:a:99999",
        "cluster:a:1?replicas=0", "cluster:a:1?replicas=x",
        "cluster:a:1?copies=2", "cluster:cluster:a:1", "cluster:a-{2..1}:1",
        "cluster:a-{0..x}:1", "cluster:a-{0..5000}:1", "cluster:a-{0..1:1",
        "cluster+srv:", "cluster+srv://1.2.3.4:53", "cluster+srv:a b",
        "cluster+srv:x?refresh=soon", "cluster:a:1?refresh=1s",
        "cluster+srv://nohost/_grpc._tcp.x"}) {
    EXPECT_EQ(ParseClusterTarget(bad).status().code(),
              absl::StatusCode::kInvalidArgument)
        << bad;
    ClientOptions options;
    options.connect_timeout = absl::Milliseconds(100);
    EXPECT_EQ(Client::Connect(bad, options).status().code(),
              absl::StatusCode::kInvalidArgument)
        << bad;
  }
}

// Deterministic: the placement of 100,000 ids over ten members named as a
// StatefulSet names them, and what adding an eleventh moves.
TEST(PlacementTest, SpreadsEvenlyAndMovesLittleWhenAServerIsAdded) {
  constexpr int kIds = 100000;
  std::vector<uint64_t> seeds;
  for (int i = 0; i < 10; ++i) {
    seeds.push_back(
        RendezvousSeed(absl::StrCat("h5depot-", i, ".h5depot:7878")));
  }
  std::vector<size_t> primary(kIds);
  std::vector<int> held(seeds.size());
  for (int id = 0; id < kIds; ++id) {
    primary[id] = PlacementOrder(seeds, absl::StrCat("run-7/packet-", id))[0];
    ++held[primary[id]];
  }
  const double mean = static_cast<double>(kIds) / seeds.size();
  EXPECT_LE(*std::max_element(held.begin(), held.end()), 1.1 * mean);

  seeds.push_back(RendezvousSeed("h5depot-10.h5depot:7878"));
  int moved = 0;
  for (int id = 0; id < kIds; ++id) {
    const size_t now =
        PlacementOrder(seeds, absl::StrCat("run-7/packet-", id))[0];
    if (now == primary[id]) continue;
    ++moved;
    EXPECT_EQ(now, 10u) << "an id moved between two old servers";
  }
  EXPECT_LE(moved, 1.2 * kIds / 11.0);
  EXPECT_GT(moved, 0.8 * kIds / 11.0);
}

TEST(PlacementTest, DependsOnTheMembersNamesNotTheirOrder) {
  const std::vector<std::string> names = {"a:1", "b:1", "c:1", "d:1"};
  std::vector<uint64_t> seeds;
  for (const std::string& name : names) seeds.push_back(RendezvousSeed(name));
  std::vector<uint64_t> reversed(seeds.rbegin(), seeds.rend());
  for (int id = 0; id < 1000; ++id) {
    const std::string image_id = absl::StrCat("id-", id);
    const size_t first = PlacementOrder(seeds, image_id)[0];
    const size_t first_reversed = PlacementOrder(reversed, image_id)[0];
    EXPECT_EQ(names[first], names[names.size() - 1 - first_reversed]);
  }
}

class ClusterTest : public ::testing::Test {
 protected:
  static constexpr int kServers = 3;

  void SetUp() override {
    for (int i = 0; i < kServers; ++i) {
      auto server = ServerProcess::Start();
      ASSERT_TRUE(server.ok()) << server.status();
      servers_.push_back(*std::move(server));
    }
  }

  // The cluster target of servers [0, count), with `replicas`.
  std::string Target(int replicas, int count = kServers) const {
    std::vector<std::string> members;
    for (int i = 0; i < count; ++i) {
      members.push_back(servers_[i]->tcp_target());
    }
    return absl::StrCat("cluster:", absl::StrJoin(members, ","),
                        "?replicas=", replicas);
  }

  static std::unique_ptr<Client> Connect(const std::string& target) {
    auto client = Client::Connect(target);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  // How many of the servers hold `image_id`, asked directly.
  int Holders(const std::string& image_id) {
    int holders = 0;
    for (const auto& server : servers_) {
      if (!server->running()) continue;
      std::unique_ptr<Client> direct = Connect(server->tcp_target());
      if (direct != nullptr && direct->Stat(image_id).ok()) ++holders;
    }
    return holders;
  }

  // The generation each server holding `image_id` has, asked directly.
  std::set<uint64_t> Generations(const std::string& image_id) {
    std::set<uint64_t> generations;
    for (const auto& server : servers_) {
      if (!server->running()) continue;
      std::unique_ptr<Client> direct = Connect(server->tcp_target());
      if (direct == nullptr) continue;
      if (absl::StatusOr<ImageInfo> info = direct->Stat(image_id); info.ok()) {
        generations.insert(info->generation);
      }
    }
    return generations;
  }

  // The index of the server `image_id` is pushed to first, among
  // servers [0, count).
  size_t Primary(const std::string& image_id, int count = kServers) const {
    std::vector<uint64_t> seeds;
    for (int i = 0; i < count; ++i) {
      seeds.push_back(RendezvousSeed(servers_[i]->tcp_target()));
    }
    return PlacementOrder(seeds, image_id)[0];
  }

  // The next `count` events of `watch`, each within 30 s.
  static std::vector<ImageEvent> NextEvents(ImageWatch& watch, size_t count) {
    std::vector<ImageEvent> events;
    while (events.size() < count) {
      absl::StatusOr<ImageEvent> event =
          watch.Next(absl::Now() + absl::Seconds(30));
      EXPECT_TRUE(event.ok()) << event.status();
      if (!event.ok()) break;
      events.push_back(*std::move(event));
    }
    return events;
  }

  std::vector<std::unique_ptr<ServerProcess>> servers_;
};

TEST_F(ClusterTest, EveryOperationBehavesAsOneDepot) {
  std::unique_ptr<Client> cluster = Connect(Target(/*replicas=*/2));
  ASSERT_TRUE(cluster);
  std::map<std::string, std::string> images;
  for (int i = 0; i < 24; ++i) {
    const std::string id = absl::StrCat("c/", i);
    images[id] = MakeHdf5Image(8192 + 512 * i, i);
    absl::StatusOr<ImageInfo> pushed =
        cluster->Push(id, images[id].data(), images[id].size());
    ASSERT_TRUE(pushed.ok()) << pushed.status();
    EXPECT_EQ(pushed->size, images[id].size());
  }
  for (const auto& [id, bytes] : images) {
    absl::StatusOr<FetchedImage> fetched = cluster->Fetch(id);
    ASSERT_TRUE(fetched.ok()) << fetched.status();
    EXPECT_EQ(std::string(static_cast<const char*>(fetched->buffer.data()),
                          fetched->buffer.size()),
              bytes);
    EXPECT_EQ(Holders(id), 2) << id;
  }
  // Stat, a ranged read, a reader, a streamed fetch.
  const std::string& bytes = images["c/7"];
  absl::StatusOr<ImageInfo> info = cluster->Stat("c/7");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->size, bytes.size());
  std::string range(100, '\0');
  absl::StatusOr<ReadResult> read =
      cluster->Read("c/7", 0, 1000, range.data(), range.size());
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(range, bytes.substr(1000, 100));
  absl::StatusOr<std::unique_ptr<ImageReader>> reader =
      cluster->OpenReader("c/7");
  ASSERT_TRUE(reader.ok()) << reader.status();
  ASSERT_TRUE((*reader)->Read(2000, range.data(), range.size()).ok());
  EXPECT_EQ(range, bytes.substr(2000, 100));
  std::string streamed;
  ASSERT_TRUE(cluster
                  ->FetchTo("c/7",
                            [&](const void* data, size_t size) {
                              streamed.append(static_cast<const char*>(data),
                                              size);
                              return absl::OkStatus();
                            })
                  .ok());
  EXPECT_EQ(streamed, bytes);

  // One listing, in id order, each id once, over pages of 5.
  std::vector<std::string> listed;
  ListOptions list;
  list.prefix = "c/";
  list.page_size = 5;
  for (int pages = 0; pages < 20; ++pages) {
    absl::StatusOr<ListPage> page = cluster->List(list);
    ASSERT_TRUE(page.ok()) << page.status();
    EXPECT_LE(page->images.size(), 5u);
    for (const ImageInfo& image : page->images) {
      listed.push_back(image.image_id);
    }
    if (page->next_page_token.empty()) break;
    list.page_token = page->next_page_token;
  }
  std::vector<std::string> expected;
  for (const auto& [id, unused] : images) expected.push_back(id);
  EXPECT_EQ(listed, expected);

  // Delete: gone from the cluster and from every server.
  ASSERT_TRUE(cluster->Delete("c/3").ok());
  EXPECT_EQ(cluster->Fetch("c/3").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Holders("c/3"), 0);
  EXPECT_EQ(cluster->Delete("c/3").code(), absl::StatusCode::kNotFound);

  absl::StatusOr<ServerLimits> limits = cluster->GetLimits();
  ASSERT_TRUE(limits.ok()) << limits.status();
  std::unique_ptr<Client> one = Connect(servers_[0]->tcp_target());
  absl::StatusOr<ServerLimits> one_limits = one->GetLimits();
  ASSERT_TRUE(one_limits.ok());
  EXPECT_EQ(limits->max_memory_bytes, 3 * one_limits->max_memory_bytes);
}

// A stream through a cluster target lives on one member, its name's
// primary: appends, reads and acknowledgements through the cluster all
// reach it, and readers through other cluster clients share its groups.
// With two replicas a stream lives on the first two servers of its
// name's order: both have every step, and the acknowledgements of its
// groups, so that either can serve the readers.
TEST_F(ClusterTest, AStreamLivesOnItsCopies) {
  const std::string target = Target(/*replicas=*/2);
  std::unique_ptr<Client> writer = Connect(target);
  std::unique_ptr<Client> reader = Connect(target);
  ASSERT_NE(writer, nullptr);
  ASSERT_NE(reader, nullptr);
  const std::string stream = "cluster/frames";
  StreamPolicy policy;
  policy.max_steps = 4;
  ASSERT_TRUE(writer->CreateStream(stream, policy).ok());
  const std::string image = MakeHdf5Image(8192, 3);
  for (uint64_t i = 0; i < 6; ++i) {
    absl::StatusOr<AppendedStep> step =
        writer->Append(stream, image.data(), image.size());
    ASSERT_TRUE(step.ok()) << step.status();
    EXPECT_EQ(step->step, i);
    NextOptions now;
    now.wait = absl::Seconds(30);
    absl::StatusOr<StreamStep> taken = reader->Next(stream, "g", now);
    ASSERT_TRUE(taken.ok()) << taken.status();
    EXPECT_EQ(taken->step, i);
    EXPECT_TRUE(reader->Ack(stream, "g", taken->step, taken->consumer).ok());
  }
  int copies = 0;
  for (int i = 0; i < kServers; ++i) {
    std::unique_ptr<Client> direct = Connect(servers_[i]->tcp_target());
    absl::StatusOr<StreamInfo> info = direct->StatStream(stream);
    if (!info.ok()) continue;
    ++copies;
    EXPECT_EQ(info->appended_steps, 6u);
    EXPECT_EQ(info->policy.max_steps, 4u);
    ASSERT_EQ(info->groups.size(), 1u);
    EXPECT_EQ(info->groups[0].acked_below, 6u) << i;
    EXPECT_EQ(info->kept_steps, 0u) << i;  // every step acknowledged
  }
  EXPECT_EQ(copies, 2);
  absl::StatusOr<StreamInfo> through = writer->StatStream(stream);
  ASSERT_TRUE(through.ok()) << through.status();
  EXPECT_EQ(through->appended_steps, 6u);
}

// The primary killed: the writer goes on appending to the replica, which
// numbers after the steps it has; the reader goes on reading there, gets
// the step it held unacknowledged again (delivery is at least once), and
// every step after, in order, then the end.
TEST_F(ClusterTest, AStreamOutlivesItsPrimaryWithTwoReplicas) {
  const std::string target = Target(/*replicas=*/2);
  std::unique_ptr<Client> writer = Connect(target);
  std::unique_ptr<Client> reader = Connect(target);
  ASSERT_TRUE(writer && reader);
  const std::string stream = "cluster/survivor";
  ASSERT_TRUE(writer->CreateStream(stream, StreamPolicy{}).ok());
  std::vector<std::string> images;
  for (int i = 0; i < 9; ++i) images.push_back(MakeHdf5Image(4096, 60 + i));
  NextOptions wait;
  wait.wait = absl::Seconds(30);
  EXPECT_TRUE(absl::IsDeadlineExceeded(
      reader->Next(stream, "g", NextOptions{}).status()));
  for (int i = 0; i < 6; ++i) {
    absl::StatusOr<AppendedStep> step =
        writer->Append(stream, images[i].data(), images[i].size());
    ASSERT_TRUE(step.ok()) << step.status();
  }
  for (uint64_t i = 0; i < 3; ++i) {
    absl::StatusOr<StreamStep> taken = reader->Next(stream, "g", wait);
    ASSERT_TRUE(taken.ok()) << taken.status();
    ASSERT_EQ(taken->step, i);
    ASSERT_TRUE(reader->Ack(stream, "g", taken->step, taken->consumer).ok());
  }
  absl::StatusOr<StreamStep> held = reader->Next(stream, "g", wait);
  ASSERT_TRUE(held.ok()) << held.status();
  ASSERT_EQ(held->step, 3u);

  servers_[Primary(stream)]->Kill();
  for (int i = 6; i < 9; ++i) {
    absl::StatusOr<AppendedStep> step =
        writer->Append(stream, images[i].data(), images[i].size());
    ASSERT_TRUE(step.ok()) << step.status();
    EXPECT_EQ(step->step, static_cast<uint64_t>(i));
  }
  ASSERT_TRUE(writer->FinishStream(stream).ok());
  for (uint64_t i = 3; i < 9; ++i) {
    absl::StatusOr<StreamStep> taken = reader->Next(stream, "g", wait);
    ASSERT_TRUE(taken.ok()) << taken.status();
    ASSERT_EQ(taken->step, i);
    EXPECT_EQ(std::string(static_cast<const char*>(taken->image.buffer.data()),
                          taken->image.buffer.size()),
              images[i]);
    ASSERT_TRUE(reader->Ack(stream, "g", taken->step, taken->consumer).ok());
  }
  EXPECT_TRUE(
      absl::IsOutOfRange(reader->Next(stream, "g", NextOptions{}).status()));
}

// A primary that comes back without the stream (restarted, no snapshot)
// is caught up by the next append through it, numbered after every step
// the other copy has; the reader, which went over to the other copy while
// the primary was down, reads on there and misses nothing.
TEST_F(ClusterTest, AStreamsPrimaryThatComesBackEmptyIsCaughtUp) {
  const std::string target = Target(/*replicas=*/2);
  std::unique_ptr<Client> writer = Connect(target);
  std::unique_ptr<Client> reader = Connect(target);
  ASSERT_TRUE(writer && reader);
  const std::string stream = "cluster/returning";
  StreamPolicy policy;
  policy.max_steps = 5;
  ASSERT_TRUE(writer->CreateStream(stream, policy).ok());
  const std::string image = MakeHdf5Image(4096, 70);
  NextOptions wait;
  wait.wait = absl::Seconds(30);
  for (uint64_t i = 0; i < 2; ++i) {
    ASSERT_TRUE(writer->Append(stream, image.data(), image.size()).ok());
    absl::StatusOr<StreamStep> taken = reader->Next(stream, "g", wait);
    ASSERT_TRUE(taken.ok()) << taken.status();
    ASSERT_EQ(taken->step, i);
    ASSERT_TRUE(reader->Ack(stream, "g", taken->step, taken->consumer).ok());
  }
  const size_t primary = Primary(stream);
  servers_[primary]->Kill();
  absl::StatusOr<AppendedStep> during =
      writer->Append(stream, image.data(), image.size());
  ASSERT_TRUE(during.ok()) << during.status();
  EXPECT_EQ(during->step, 2u);
  // The reader, reading on, goes over to the replica.
  absl::StatusOr<StreamStep> failed_over = reader->Next(stream, "g", wait);
  ASSERT_TRUE(failed_over.ok()) << failed_over.status();
  EXPECT_EQ(failed_over->step, 2u);
  ASSERT_TRUE(
      reader->Ack(stream, "g", failed_over->step, failed_over->consumer).ok());
  ASSERT_TRUE(servers_[primary]->Restart().ok());

  // A writer that starts now (this one would leave the server it saw
  // fail alone for a second) appends to the primary first.
  writer = Connect(target);
  ASSERT_TRUE(writer);
  absl::StatusOr<AppendedStep> after =
      writer->Append(stream, image.data(), image.size());
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->step, 3u);
  std::unique_ptr<Client> direct = Connect(servers_[primary]->tcp_target());
  absl::StatusOr<StreamInfo> on_primary = direct->StatStream(stream);
  ASSERT_TRUE(on_primary.ok()) << on_primary.status();
  EXPECT_EQ(on_primary->appended_steps, 4u);
  EXPECT_EQ(on_primary->policy.max_steps, 5u);  // made again with it
  absl::StatusOr<StreamStep> taken = reader->Next(stream, "g", wait);
  ASSERT_TRUE(taken.ok()) << taken.status();
  EXPECT_EQ(taken->step, 3u);
  ASSERT_TRUE(reader->Ack(stream, "g", taken->step, taken->consumer).ok());
  // A reader that starts now reads from the copy with the most steps
  // (both have all four): nothing is left for the group but, at most,
  // step 3 again, if its acknowledgement came while the reader still
  // left the restarted server alone (no copy went there).
  std::unique_ptr<Client> late = Connect(target);
  ASSERT_TRUE(late);
  absl::StatusOr<StreamStep> again = late->Next(stream, "g", NextOptions{});
  if (again.ok()) {
    EXPECT_EQ(again->step, 3u);
  } else {
    EXPECT_TRUE(absl::IsDeadlineExceeded(again.status())) << again.status();
  }
  // Deleted, it is gone from every server.
  ASSERT_TRUE(writer->DeleteStream(stream).ok());
  for (const auto& server : servers_) {
    std::unique_ptr<Client> each = Connect(server->tcp_target());
    ASSERT_TRUE(each);
    EXPECT_TRUE(absl::IsNotFound(each->StatStream(stream).status()));
  }
}

TEST_F(ClusterTest, AKilledServerLosesNoImageWithTwoReplicas) {
  std::unique_ptr<Client> cluster = Connect(Target(/*replicas=*/2));
  ASSERT_TRUE(cluster);
  const std::string image = MakeHdf5Image(16384, 3);
  for (int i = 0; i < 30; ++i) {
    ASSERT_TRUE(
        cluster->Push(absl::StrCat("k/", i), image.data(), image.size()).ok());
  }
  servers_[1]->Kill();
  for (int i = 0; i < 30; ++i) {
    absl::StatusOr<FetchedImage> fetched =
        cluster->Fetch(absl::StrCat("k/", i));
    ASSERT_TRUE(fetched.ok()) << fetched.status();
    EXPECT_EQ(fetched->buffer.size(), image.size());
  }
  // New pushes still find two servers, and the listing is whole.
  for (int i = 30; i < 40; ++i) {
    const std::string id = absl::StrCat("k/", i);
    ASSERT_TRUE(cluster->Push(id, image.data(), image.size()).ok()) << id;
    EXPECT_EQ(Holders(id), 2) << id;
  }
  ListOptions list;
  list.prefix = "k/";
  absl::StatusOr<ListPage> page = cluster->List(list);
  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_EQ(page->images.size(), 40u);
}

TEST_F(ClusterTest, WithOneReplicaAKilledServersImagesAreUnavailableNotGone) {
  std::unique_ptr<Client> cluster = Connect(Target(/*replicas=*/1));
  ASSERT_TRUE(cluster);
  const std::string image = MakeHdf5Image(8192, 5);
  for (int i = 0; i < 30; ++i) {
    ASSERT_TRUE(
        cluster->Push(absl::StrCat("u/", i), image.data(), image.size()).ok());
  }
  std::unique_ptr<Client> killed = Connect(servers_[2]->tcp_target());
  absl::StatusOr<ListPage> on_killed = killed->List();
  ASSERT_TRUE(on_killed.ok());
  ASSERT_FALSE(on_killed->images.empty());
  servers_[2]->Kill();
  const std::string lost = on_killed->images[0].image_id;
  absl::Status status = cluster->Fetch(lost).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_EQ(cluster->Fetch("u/never-pushed").status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(cluster->List().status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(ClusterTest, ConditionalOperationsAreDecidedByThePrimary) {
  std::unique_ptr<Client> cluster = Connect(Target(/*replicas=*/2));
  ASSERT_TRUE(cluster);
  const std::string image = MakeHdf5Image(8192, 1);
  PushOptions create;
  create.if_generation_match = 0;
  absl::StatusOr<ImageInfo> first =
      cluster->Push("cond", image.data(), image.size(), create);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(Holders("cond"), 2);
  EXPECT_EQ(
      cluster->Push("cond", image.data(), image.size(), create).status().code(),
      absl::StatusCode::kAlreadyExists);

  PushOptions update;
  update.if_generation_match = first->generation;
  absl::StatusOr<ImageInfo> second =
      cluster->Push("cond", image.data(), image.size(), update);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_GT(second->generation, first->generation);
  // The generation a reader sees is the one conditions are checked on.
  absl::StatusOr<ImageInfo> seen = cluster->Stat("cond");
  ASSERT_TRUE(seen.ok());
  EXPECT_EQ(seen->generation, second->generation);
  EXPECT_EQ(
      cluster->Push("cond", image.data(), image.size(), update).status().code(),
      absl::StatusCode::kAborted);

  EXPECT_EQ(cluster->Delete("cond", first->generation).code(),
            absl::StatusCode::kAborted);
  EXPECT_EQ(Holders("cond"), 2);
  ASSERT_TRUE(cluster->Delete("cond", second->generation).ok());
  EXPECT_EQ(Holders("cond"), 0);
}

TEST_F(ClusterTest, WaitsSeeAnotherClientsPush) {
  std::unique_ptr<Client> consumer = Connect(Target(/*replicas=*/2));
  std::unique_ptr<Client> producer = Connect(Target(/*replicas=*/2));
  ASSERT_TRUE(consumer && producer);
  const std::string image = MakeHdf5Image(8192, 2);
  absl::StatusOr<FetchedImage> waited = absl::UnknownError("not run");
  std::thread waiter([&] {
    FetchOptions options;
    options.wait = absl::Seconds(60);
    waited = consumer->Fetch("w/next", options);
  });
  // The wait is under way once the server counts it; pushing before that
  // is fine too (the fetch then finds the image at once).
  absl::StatusOr<ImageInfo> pushed =
      producer->Push("w/next", image.data(), image.size());
  waiter.join();
  ASSERT_TRUE(pushed.ok()) << pushed.status();
  ASSERT_TRUE(waited.ok()) << waited.status();
  EXPECT_EQ(waited->info.generation, pushed->generation);

  // A consumer loop: the generation after the one it has.
  absl::StatusOr<ImageInfo> next = absl::UnknownError("not run");
  std::thread follower([&] {
    next = consumer->Stat("w/next", absl::Seconds(60), pushed->generation);
  });
  absl::StatusOr<ImageInfo> again =
      producer->Push("w/next", image.data(), image.size());
  follower.join();
  ASSERT_TRUE(again.ok()) << again.status();
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(next->generation, again->generation);
}

TEST_F(ClusterTest, AnAddedServerStillFindsEveryImage) {
  std::unique_ptr<Client> two = Connect(Target(/*replicas=*/1, /*count=*/2));
  ASSERT_TRUE(two);
  const std::string image = MakeHdf5Image(8192, 4);
  for (int i = 0; i < 30; ++i) {
    ASSERT_TRUE(
        two->Push(absl::StrCat("m/", i), image.data(), image.size()).ok());
  }
  // With a third server, about a third of the ids now place there first
  // and are found further down.
  std::unique_ptr<Client> three = Connect(Target(/*replicas=*/1));
  ASSERT_TRUE(three);
  for (int i = 0; i < 30; ++i) {
    EXPECT_TRUE(three->Fetch(absl::StrCat("m/", i)).ok()) << i;
  }
  ListOptions list;
  list.prefix = "m/";
  absl::StatusOr<ListPage> page = three->List(list);
  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_EQ(page->images.size(), 30u);
}

// Members found in DNS, as a headless Service publishes a StatefulSet's
// pods, and a server added to DNS taken up while the client runs.
TEST_F(ClusterTest, AnSrvTargetFindsItsMembersInDnsAndFollowsChanges) {
  SrvNameServer dns("_grpc._tcp.h5depot.test");
  std::vector<std::pair<std::string, int>> records;
  for (const auto& server : servers_) {
    const std::string& target = server->tcp_target();
    records.emplace_back(target.substr(0, target.rfind(':')),
                         std::stoi(target.substr(target.rfind(':') + 1)));
  }
  dns.SetRecords({records[0], records[1]});
  const std::string target =
      absl::StrCat("cluster+srv://", dns.address(),
                   "/_grpc._tcp.h5depot.test?replicas=1&refresh=100ms");
  std::unique_ptr<Client> cluster = Connect(target);
  ASSERT_TRUE(cluster);
  const std::string image = MakeHdf5Image(8192, 6);
  for (int i = 0; i < 20; ++i) {
    const std::string id = absl::StrCat("srv/", i);
    ASSERT_TRUE(cluster->Push(id, image.data(), image.size()).ok());
    EXPECT_EQ(Holders(id), 1);
  }
  std::unique_ptr<Client> third = Connect(servers_[2]->tcp_target());
  absl::StatusOr<ListPage> none = third->List();
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->images.empty());

  // The third server appears in DNS: within the refresh, new ids start to
  // be placed on it too.
  dns.SetRecords(records);
  bool placed_on_third = false;
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  for (int i = 0; !placed_on_third && absl::Now() < deadline; ++i) {
    const std::string id = absl::StrCat("srv/new-", i);
    ASSERT_TRUE(cluster->Push(id, image.data(), image.size()).ok());
    placed_on_third = third->Stat(id).ok();
  }
  EXPECT_TRUE(placed_on_third);
  for (int i = 0; i < 20; ++i) {
    EXPECT_TRUE(cluster->Fetch(absl::StrCat("srv/", i)).ok()) << i;
  }

  // A name DNS does not know.
  EXPECT_EQ(Client::Connect(absl::StrCat("cluster+srv://", dns.address(),
                                         "/_grpc._tcp.unknown.test"))
                .status()
                .code(),
            absl::StatusCode::kUnavailable);
}

TEST_F(ClusterTest, TheRemoteDriverCreatesAndOpensThroughACluster) {
  const std::string target = Target(/*replicas=*/2);
  H5FD_remote_config_t config = H5FD_REMOTE_CONFIG_INIT;
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  ASSERT_GE(H5Pset_fapl_remote(fapl, target.c_str(), &config), 0);
  const hsize_t count = 1000;
  std::vector<int> values(count);
  for (hsize_t i = 0; i < count; ++i) values[i] = static_cast<int>(i * 3);
  hid_t file = H5Fcreate("driver/run", H5F_ACC_EXCL, H5P_DEFAULT, fapl);
  ASSERT_GE(file, 0);
  ASSERT_GE(H5LTmake_dataset_int(file, "ints", 1, &count, values.data()), 0);
  ASSERT_GE(H5Fclose(file), 0);
  EXPECT_EQ(Holders("driver/run"), 2);

  file = H5Fopen("driver/run", H5F_ACC_RDONLY, fapl);
  ASSERT_GE(file, 0);
  std::vector<int> read(count, -1);
  EXPECT_GE(H5LTread_dataset_int(file, "ints", read.data()), 0);
  EXPECT_EQ(read, values);
  H5Fclose(file);
  H5Pclose(fapl);
}

// Rebalancing: a server joins, then one leaves (drained, then stopped),
// and nothing is lost; each image ends with exactly its one copy.
TEST_F(ClusterTest, RebalanceMovesImagesSoThatAServerCanLeave) {
  std::unique_ptr<Client> two = Connect(Target(/*replicas=*/1, /*count=*/2));
  ASSERT_TRUE(two);
  std::map<std::string, std::string> images;
  for (int i = 0; i < 30; ++i) {
    const std::string id = absl::StrCat("r/", i);
    images[id] = MakeHdf5Image(8192, 100 + i);
    ASSERT_TRUE(two->Push(id, images[id].data(), images[id].size()).ok());
  }
  std::unique_ptr<Client> three = Connect(Target(/*replicas=*/1));
  ASSERT_TRUE(three);
  absl::StatusOr<RebalanceReport> joined = three->Rebalance();
  ASSERT_TRUE(joined.ok()) << joined.status();
  EXPECT_EQ(joined->images, 30u);
  EXPECT_GT(joined->copies_made, 0u);
  EXPECT_EQ(joined->copies_removed, joined->copies_made);
  EXPECT_EQ(joined->failed, 0u) << joined->first_error;
  std::unique_ptr<Client> newcomer = Connect(servers_[2]->tcp_target());
  absl::StatusOr<ListPage> moved = newcomer->List();
  ASSERT_TRUE(moved.ok());
  EXPECT_EQ(moved->images.size(), joined->copies_made);
  for (const auto& [id, bytes] : images) EXPECT_EQ(Holders(id), 1) << id;

  // Server 0 leaves: drained into servers 1 and 2, then stopped.
  const std::string without_first = absl::StrCat(
      "cluster:", servers_[1]->tcp_target(), ",", servers_[2]->tcp_target());
  std::unique_ptr<Client> remaining = Connect(without_first);
  ASSERT_TRUE(remaining);
  RebalanceOptions drain;
  drain.drain = {servers_[0]->tcp_target()};
  absl::StatusOr<RebalanceReport> left = remaining->Rebalance(drain);
  ASSERT_TRUE(left.ok()) << left.status();
  EXPECT_EQ(left->failed, 0u) << left->first_error;
  std::unique_ptr<Client> leaving = Connect(servers_[0]->tcp_target());
  absl::StatusOr<ListPage> left_behind = leaving->List();
  ASSERT_TRUE(left_behind.ok());
  EXPECT_TRUE(left_behind->images.empty());
  ASSERT_TRUE(servers_[0]->Terminate().ok());
  for (const auto& [id, bytes] : images) {
    absl::StatusOr<FetchedImage> fetched = remaining->Fetch(id);
    ASSERT_TRUE(fetched.ok()) << fetched.status();
    EXPECT_EQ(std::string(static_cast<const char*>(fetched->buffer.data()),
                          fetched->buffer.size()),
              bytes);
    EXPECT_EQ(Holders(id), 1) << id;
  }
}

// A server that comes back empty gets its copies again.
TEST_F(ClusterTest, RebalanceRestoresTheCopiesOfARestartedServer) {
  std::unique_ptr<Client> cluster = Connect(Target(/*replicas=*/2));
  ASSERT_TRUE(cluster);
  const std::string image = MakeHdf5Image(8192, 9);
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(
        cluster->Push(absl::StrCat("l/", i), image.data(), image.size()).ok());
  }
  std::unique_ptr<Client> direct = Connect(servers_[1]->tcp_target());
  absl::StatusOr<ListPage> before = direct->List();
  ASSERT_TRUE(before.ok());
  ASSERT_TRUE(servers_[1]->Restart().ok());
  absl::StatusOr<RebalanceReport> report = cluster->Rebalance();
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->copies_made, before->images.size());
  EXPECT_EQ(report->copies_removed, 0u);
  for (int i = 0; i < 20; ++i) {
    const std::string id = absl::StrCat("l/", i);
    EXPECT_EQ(Holders(id), 2);
    // The copies made are of the generation the other replica holds.
    EXPECT_EQ(Generations(id).size(), 1u) << id;
  }
}

// A server that comes back from a snapshot holds the generation it had
// when it stopped, and is first in the order of the ids it held. With two
// replicas a read that reaches it first still gets the newer generation
// pushed to the other copies while it was down, from a client that saw it
// go and from one that starts afterwards; a restored copy that is still
// current is read from it as before. The first fetch also replaces the
// stale copy with the newer one.
TEST_F(ClusterTest, AReadDoesNotStopAtAnOlderCopyRestoredFromASnapshot) {
  absl::StatusOr<testing::TempDir> snapshots = testing::TempDir::Create();
  ASSERT_TRUE(snapshots.ok()) << snapshots.status();
  servers_.clear();
  for (int i = 0; i < kServers; ++i) {
    testing::ServerProcessOptions options;
    options.extra_flags = {
        absl::StrCat("--snapshot-dir=", snapshots->File(absl::StrCat(i)))};
    auto server = ServerProcess::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    servers_.push_back(*std::move(server));
  }
  const std::string replaced_id = "restored/replaced";
  const size_t primary = Primary(replaced_id);
  // An id the same server holds first, which nobody pushes again.
  std::string kept_id;
  for (int i = 0; kept_id.empty(); ++i) {
    const std::string candidate = absl::StrCat("restored/kept-", i);
    if (Primary(candidate) == primary) kept_id = candidate;
  }
  const std::string old_image = MakeHdf5Image(4096, 31);
  const std::string new_image = MakeHdf5Image(5000, 32);
  std::unique_ptr<Client> cluster = Connect(Target(/*replicas=*/2));
  ASSERT_TRUE(cluster);
  absl::StatusOr<ImageInfo> old_info =
      cluster->Push(replaced_id, old_image.data(), old_image.size());
  ASSERT_TRUE(old_info.ok()) << old_info.status();
  absl::StatusOr<ImageInfo> kept_info =
      cluster->Push(kept_id, old_image.data(), old_image.size());
  ASSERT_TRUE(kept_info.ok()) << kept_info.status();

  ASSERT_TRUE(servers_[primary]->Terminate().ok());  // writes its snapshot
  absl::StatusOr<ImageInfo> new_info =
      cluster->Push(replaced_id, new_image.data(), new_image.size());
  ASSERT_TRUE(new_info.ok()) << new_info.status();
  ASSERT_GT(new_info->generation, old_info->generation);
  ASSERT_TRUE(servers_[primary]->Restart().ok());
  {
    std::unique_ptr<Client> direct = Connect(servers_[primary]->tcp_target());
    ASSERT_TRUE(direct);
    absl::StatusOr<ImageInfo> restored = direct->Stat(replaced_id);
    ASSERT_TRUE(restored.ok()) << restored.status();
    ASSERT_EQ(restored->generation, old_info->generation);
  }

  std::unique_ptr<Client> fresh = Connect(Target(/*replicas=*/2));
  ASSERT_TRUE(fresh);
  for (Client* reader : {fresh.get(), cluster.get()}) {
    SCOPED_TRACE(reader == fresh.get() ? "a new client" : "the same client");
    for (int round = 0; round < 2; ++round) {
      absl::StatusOr<ImageInfo> stat = reader->Stat(replaced_id);
      ASSERT_TRUE(stat.ok()) << stat.status();
      EXPECT_EQ(stat->generation, new_info->generation);
      std::string streamed;
      absl::StatusOr<ImageInfo> fetched_to =
          reader->FetchTo(replaced_id, [&](const void* data, size_t size) {
            streamed.append(static_cast<const char*>(data), size);
            return absl::OkStatus();
          });
      ASSERT_TRUE(fetched_to.ok()) << fetched_to.status();
      EXPECT_EQ(fetched_to->generation, new_info->generation);
      EXPECT_EQ(streamed, new_image);
      absl::StatusOr<FetchedImage> fetched = reader->Fetch(replaced_id);
      ASSERT_TRUE(fetched.ok()) << fetched.status();
      EXPECT_EQ(fetched->info.generation, new_info->generation);
      EXPECT_EQ(std::string(static_cast<const char*>(fetched->buffer.data()),
                            fetched->buffer.size()),
                new_image);

      absl::StatusOr<FetchedImage> kept = reader->Fetch(kept_id);
      ASSERT_TRUE(kept.ok()) << kept.status();
      EXPECT_EQ(kept->info.generation, kept_info->generation);
      EXPECT_EQ(std::string(static_cast<const char*>(kept->buffer.data()),
                            kept->buffer.size()),
                old_image);
    }
  }
  // The first fetch put the newer generation where the stale copy was; the
  // copy nobody changed stayed as it was.
  {
    std::unique_ptr<Client> direct = Connect(servers_[primary]->tcp_target());
    ASSERT_TRUE(direct);
    absl::StatusOr<ImageInfo> repaired = direct->Stat(replaced_id);
    ASSERT_TRUE(repaired.ok()) << repaired.status();
    EXPECT_EQ(repaired->generation, new_info->generation);
    EXPECT_EQ(repaired->checksum, new_info->checksum);
    absl::StatusOr<ImageInfo> kept = direct->Stat(kept_id);
    ASSERT_TRUE(kept.ok()) << kept.status();
    EXPECT_EQ(kept->generation, kept_info->generation);
  }
  absl::StatusOr<ServerLimits> limits = fresh->GetLimits();
  ASSERT_TRUE(limits.ok()) << limits.status();
  EXPECT_NE(limits->restored_at, absl::InfinitePast());
}

// A stream's steps are images of the servers that hold the stream, but
// they belong to it: a rebalance leaves them where they are, and reports
// no failure for them.
TEST_F(ClusterTest, RebalanceLeavesStreamsAlone) {
  std::unique_ptr<Client> cluster = Connect(Target(/*replicas=*/2));
  ASSERT_TRUE(cluster);
  const std::string image = MakeHdf5Image(8192, 12);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(cluster->Append("s/steps", image.data(), image.size()).ok());
    ASSERT_TRUE(
        cluster->Push(absl::StrCat("i/", i), image.data(), image.size()).ok());
  }
  absl::StatusOr<RebalanceReport> report = cluster->Rebalance();
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->images, 3u);  // the images, not the steps
  EXPECT_EQ(report->failed, 0u) << report->first_error;
  absl::StatusOr<StreamInfo> info = cluster->StatStream("s/steps");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->kept_steps, 3u);
}

// Clients keep pushing new generations through the new membership while
// the rebalance runs: every id ends with the last one pushed.
TEST_F(ClusterTest, RebalanceKeepsWhatClientsPushMeanwhile) {
  std::unique_ptr<Client> two = Connect(Target(/*replicas=*/1, /*count=*/2));
  ASSERT_TRUE(two);
  constexpr int kIds = 20;
  std::vector<std::string> versions;
  for (int v = 0; v < 4; ++v) versions.push_back(MakeHdf5Image(8192, 200 + v));
  for (int i = 0; i < kIds; ++i) {
    ASSERT_TRUE(
        two->Push(absl::StrCat("p/", i), versions[0].data(), versions[0].size())
            .ok());
  }
  std::unique_ptr<Client> writer = Connect(Target(/*replicas=*/1));
  std::unique_ptr<Client> operator_client = Connect(Target(/*replicas=*/1));
  ASSERT_TRUE(writer && operator_client);
  std::thread pushes([&] {
    for (int v = 1; v < 4; ++v) {
      for (int i = 0; i < kIds; ++i) {
        EXPECT_TRUE(writer
                        ->Push(absl::StrCat("p/", i), versions[v].data(),
                               versions[v].size())
                        .ok());
      }
    }
  });
  absl::StatusOr<RebalanceReport> during = operator_client->Rebalance();
  pushes.join();
  ASSERT_TRUE(during.ok()) << during.status();
  EXPECT_EQ(during->failed, 0u) << during->first_error;
  absl::StatusOr<RebalanceReport> after = operator_client->Rebalance();
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->failed, 0u) << after->first_error;
  for (int i = 0; i < kIds; ++i) {
    const std::string id = absl::StrCat("p/", i);
    absl::StatusOr<FetchedImage> fetched = writer->Fetch(id);
    ASSERT_TRUE(fetched.ok()) << fetched.status();
    EXPECT_EQ(std::string(static_cast<const char*>(fetched->buffer.data()),
                          fetched->buffer.size()),
              versions[3])
        << id;
    EXPECT_EQ(Holders(id), 1) << id;
  }
}

// The command an operator (or a Kubernetes Job) runs: the CLI, through a
// cluster target given as H5DEPOT_SERVER would be, puts and lists, then
// drains a server and says what it moved.
TEST_F(ClusterTest, TheCommandLineRebalancesAndDrains) {
  const std::string all = Target(/*replicas=*/1);
  absl::StatusOr<testing::TempDir> dir = testing::TempDir::Create();
  ASSERT_TRUE(dir.ok()) << dir.status();
  const std::string file = dir->File("packet.h5");
  {
    const std::string image = MakeHdf5Image(8192, 11);
    FILE* out = std::fopen(file.c_str(), "wb");
    ASSERT_NE(out, nullptr);
    ASSERT_EQ(std::fwrite(image.data(), 1, image.size(), out), image.size());
    std::fclose(out);
  }
  for (int i = 0; i < 12; ++i) {
    const testing::CommandResult put =
        testing::RunCommand({testing::H5depotCliPath(), "--server", all, "put",
                             file, "--id", absl::StrCat("cli/", i)});
    ASSERT_EQ(put.exit_code, 0) << put.stderr_text;
  }
  const testing::CommandResult listed = testing::RunCommand(
      {testing::H5depotCliPath(), "--server", all, "ls", "cli/"});
  ASSERT_EQ(listed.exit_code, 0) << listed.stderr_text;
  EXPECT_EQ(
      std::count(listed.stdout_text.begin(), listed.stdout_text.end(), '\n'),
      13);  // a header and twelve images

  std::unique_ptr<Client> leaving = Connect(servers_[0]->tcp_target());
  absl::StatusOr<ListPage> held = leaving->List();
  ASSERT_TRUE(held.ok());
  const std::string remaining = absl::StrCat(
      "cluster:", servers_[1]->tcp_target(), ",", servers_[2]->tcp_target());
  const testing::CommandResult drained = testing::RunCommand(
      {testing::H5depotCliPath(), "--server", remaining, "rebalance", "cli/",
       "--drain", servers_[0]->tcp_target()});
  ASSERT_EQ(drained.exit_code, 0) << drained.stderr_text;
  EXPECT_NE(drained.stdout_text.find("images: 12\n"), std::string::npos)
      << drained.stdout_text;
  EXPECT_NE(drained.stdout_text.find(
                absl::StrCat("copies removed: ", held->images.size(), "\n")),
            std::string::npos)
      << drained.stdout_text;
  EXPECT_NE(drained.stdout_text.find("failed: 0\n"), std::string::npos);
  absl::StatusOr<ListPage> left = leaving->List();
  ASSERT_TRUE(left.ok());
  EXPECT_TRUE(left->images.empty());

  // A single server is not a cluster to rebalance.
  const testing::CommandResult single =
      testing::RunCommand({testing::H5depotCliPath(), "--server",
                           servers_[1]->tcp_target(), "rebalance"});
  EXPECT_EQ(single.exit_code, 1) << single.stderr_text;
  EXPECT_NE(single.stderr_text.find("rebalancing is for a cluster target"),
            std::string::npos)
      << single.stderr_text;
  EXPECT_EQ(single.stderr_text.find("rebalance: rebalance:"), std::string::npos)
      << single.stderr_text;

  // A watch of the cluster starts (and refuses to start after a number).
  const testing::CommandResult watched =
      testing::RunCommand({testing::H5depotCliPath(), "--server", all, "watch",
                           "cli/", "--count", "0"});
  EXPECT_EQ(watched.exit_code, 0) << watched.stderr_text;
  const testing::CommandResult after =
      testing::RunCommand({testing::H5depotCliPath(), "--server", all, "watch",
                           "cli/", "--after", "1"});
  EXPECT_NE(after.exit_code, 0);
  EXPECT_NE(after.stderr_text.find("cannot start after a sequence"),
            std::string::npos)
      << after.stderr_text;
}

TEST_F(ClusterTest, RebalanceMovesNothingWhenAMemberIsDown) {
  std::unique_ptr<Client> cluster = Connect(Target(/*replicas=*/2));
  ASSERT_TRUE(cluster);
  servers_[2]->Kill();
  EXPECT_EQ(cluster->Rebalance().status().code(),
            absl::StatusCode::kUnavailable);
  std::unique_ptr<Client> one = Connect(servers_[0]->tcp_target());
  EXPECT_EQ(one->Rebalance().status().code(),
            absl::StatusCode::kFailedPrecondition);
}

// Every copy of a push carries the first copy's generation, and servers
// number their later changes after it: a consumer following generations
// with "newer than" goes on through a failover of the image's primary.
TEST_F(ClusterTest, ReplicasShareAGenerationAndAConsumerGoesOnAfterAFailover) {
  std::unique_ptr<Client> producer = Connect(Target(/*replicas=*/2));
  std::unique_ptr<Client> consumer = Connect(Target(/*replicas=*/2));
  ASSERT_TRUE(producer && consumer);
  const std::string id = "f/packet";
  const std::string first = MakeHdf5Image(8192, 41);
  absl::StatusOr<ImageInfo> pushed =
      producer->Push(id, first.data(), first.size());
  ASSERT_TRUE(pushed.ok()) << pushed.status();
  EXPECT_EQ(Holders(id), 2);
  EXPECT_EQ(Generations(id), std::set<uint64_t>{pushed->generation});
  absl::StatusOr<FetchedImage> held = consumer->Fetch(id);
  ASSERT_TRUE(held.ok()) << held.status();
  ASSERT_EQ(held->info.generation, pushed->generation);

  servers_[Primary(id)]->Kill();
  const std::string second = MakeHdf5Image(8192, 42);
  absl::StatusOr<ImageInfo> next =
      producer->Push(id, second.data(), second.size());
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_GT(next->generation, pushed->generation);
  EXPECT_EQ(Generations(id), std::set<uint64_t>{next->generation});
  FetchOptions newer;
  newer.newer_than = held->info.generation;
  newer.wait = absl::Seconds(30);
  absl::StatusOr<FetchedImage> got = consumer->Fetch(id, newer);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->info.generation, next->generation);
  EXPECT_EQ(std::string(static_cast<const char*>(got->buffer.data()),
                        got->buffer.size()),
            second);
  // A given generation is read from whichever replica holds it.
  std::string head(8, '\0');
  absl::StatusOr<ReadResult> read =
      consumer->Read(id, next->generation, 0, head.data(), head.size());
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(head, second.substr(0, 8));
}

// A watch of a cluster merges its servers' watches: with two copies of
// every image, each push, replacement and delete is reported once, with
// the generation the push returned.
TEST_F(ClusterTest, AWatchOfAClusterReportsEachChangeOnce) {
  std::unique_ptr<Client> cluster = Connect(Target(/*replicas=*/2));
  ASSERT_TRUE(cluster);
  WatchOptions options;
  options.prefix = "w/";
  absl::StatusOr<std::unique_ptr<ImageWatch>> watch = cluster->Watch(options);
  ASSERT_TRUE(watch.ok()) << watch.status();
  const std::string image = MakeHdf5Image(8192, 51);
  std::map<std::string, uint64_t> published;  // "kind id" -> generation
  for (int i = 0; i < 10; ++i) {
    const std::string id = absl::StrCat("w/", i);
    absl::StatusOr<ImageInfo> pushed =
        cluster->Push(id, image.data(), image.size());
    ASSERT_TRUE(pushed.ok()) << pushed.status();
    published[absl::StrCat("published ", id)] = pushed->generation;
  }
  for (int i = 0; i < 3; ++i) {
    const std::string id = absl::StrCat("w/", i);
    absl::StatusOr<ImageInfo> pushed =
        cluster->Push(id, image.data(), image.size());
    ASSERT_TRUE(pushed.ok()) << pushed.status();
    published[absl::StrCat("replaced ", id)] = pushed->generation;
  }
  for (int i = 3; i < 5; ++i) {
    const std::string id = absl::StrCat("w/", i);
    published[absl::StrCat("deleted ", id)] =
        published[absl::StrCat("published ", id)];
    ASSERT_TRUE(cluster->Delete(id).ok());
  }
  ASSERT_TRUE(cluster->Push("x/elsewhere", image.data(), image.size()).ok());

  std::map<std::string, uint64_t> seen;
  for (const ImageEvent& event : NextEvents(**watch, published.size())) {
    const std::string key =
        absl::StrCat(ImageEventKindName(event.kind), " ", event.image_id);
    EXPECT_TRUE(seen.emplace(key, event.generation).second) << key;
  }
  EXPECT_EQ(seen, published);
  // Nothing more: no replica's second report, no other prefix.
  absl::StatusOr<ImageEvent> more =
      (*watch)->Next(absl::Now() + absl::Seconds(1));
  EXPECT_EQ(more.status().code(), absl::StatusCode::kDeadlineExceeded)
      << ImageEventKindName(more->kind) << " " << more->image_id;

  // Members number their changes each their own way.
  WatchOptions after;
  after.after = 1;
  EXPECT_EQ(cluster->Watch(after).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// A rebalance moves copies between servers: the copies it removes from
// the old places are no deletions of the cluster's images.
TEST_F(ClusterTest, AWatchOfAClusterDoesNotReportARebalancesMovesAsDeletes) {
  std::unique_ptr<Client> two = Connect(Target(/*replicas=*/1, /*count=*/2));
  ASSERT_TRUE(two);
  const std::string image = MakeHdf5Image(8192, 61);
  std::map<std::string, uint64_t> generations;
  for (int i = 0; i < 30; ++i) {
    const std::string id = absl::StrCat("m/", i);
    absl::StatusOr<ImageInfo> pushed =
        two->Push(id, image.data(), image.size());
    ASSERT_TRUE(pushed.ok()) << pushed.status();
    generations[id] = pushed->generation;
  }
  std::unique_ptr<Client> three = Connect(Target(/*replicas=*/1));
  ASSERT_TRUE(three);
  WatchOptions options;
  options.prefix = "m/";
  absl::StatusOr<std::unique_ptr<ImageWatch>> watch = three->Watch(options);
  ASSERT_TRUE(watch.ok()) << watch.status();
  absl::StatusOr<RebalanceReport> report = three->Rebalance();
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_GT(report->copies_removed, 0u);
  // Then a real delete, reported after the moves.
  ASSERT_TRUE(three->Delete("m/0").ok());
  std::vector<ImageEvent> events;
  while (events.empty() || events.back().kind == ImageEvent::Kind::kPublished) {
    std::vector<ImageEvent> one = NextEvents(**watch, 1);
    if (one.empty()) break;
    events.push_back(one[0]);
  }
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back().kind, ImageEvent::Kind::kDeleted);
  EXPECT_EQ(events.back().image_id, "m/0");
  // The moves' copies: published again, with the generation they had.
  EXPECT_EQ(events.size() - 1, report->copies_made);
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    EXPECT_EQ(events[i].generation, generations[events[i].image_id]);
  }
}

// With two copies of every image a watch goes on past a killed server;
// with one it ends, since the killed server's images would go unwatched.
TEST_F(ClusterTest, AWatchOfAClusterOutlivesAKilledServerOnlyWithReplicas) {
  std::unique_ptr<Client> replicated = Connect(Target(/*replicas=*/2));
  std::unique_ptr<Client> single = Connect(Target(/*replicas=*/1));
  ASSERT_TRUE(replicated && single);
  WatchOptions options;
  options.prefix = "s/";
  absl::StatusOr<std::unique_ptr<ImageWatch>> survives =
      replicated->Watch(options);
  absl::StatusOr<std::unique_ptr<ImageWatch>> ends = single->Watch(options);
  ASSERT_TRUE(survives.ok() && ends.ok());
  servers_[1]->Kill();
  absl::StatusOr<ImageEvent> ended =
      (*ends)->Next(absl::Now() + absl::Seconds(30));
  EXPECT_EQ(ended.status().code(), absl::StatusCode::kUnavailable)
      << ended.status();
  EXPECT_EQ(single->Watch(options).status().code(),
            absl::StatusCode::kUnavailable);

  const std::string image = MakeHdf5Image(8192, 71);
  std::set<std::string> pushed;
  for (int i = 0; i < 10; ++i) {
    const std::string id = absl::StrCat("s/", i);
    ASSERT_TRUE(replicated->Push(id, image.data(), image.size()).ok()) << id;
    pushed.insert(id);
  }
  std::set<std::string> seen;
  for (const ImageEvent& event : NextEvents(**survives, pushed.size())) {
    EXPECT_EQ(event.kind, ImageEvent::Kind::kPublished);
    EXPECT_TRUE(seen.insert(event.image_id).second) << event.image_id;
  }
  EXPECT_EQ(seen, pushed);
}

}  // namespace
}  // namespace h5depot
