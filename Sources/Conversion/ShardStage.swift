import DeepSeekModel
import Foundation
import SafeTensors

/// `placement.json`: where every routed expert went (Schemas/placement.schema.json).
public struct PlacementManifest: Codable, Equatable, Sendable {
    public struct LayerDevices: Codable, Equatable, Sendable {
        public var layer: Int
        /// Per device, its expert range [start, end).
        public var experts: [[Int]]
    }

    public struct DeviceBytes: Codable, Equatable, Sendable {
        public var device: Int
        public var directory: String
        public var totalBytes: Int
        public var expertBytes: Int
        public var denseBytes: Int

        enum CodingKeys: String, CodingKey {
            case device, directory
            case totalBytes = "total_bytes"
            case expertBytes = "expert_bytes"
            case denseBytes = "dense_bytes"
        }
    }

    public var format = "dsconvert-placement"
    public var version = 1
    public var placement: ExpertPlacement
    public var dense: DenseReplication
    public var layers: [LayerDevices]
    public var devices: [DeviceBytes]
    /// (max − min) / mean of the expert bytes per device.
    public var expertBytesSpread: Double
    public var files: [ConversionManifest.FileRecord]

    enum CodingKeys: String, CodingKey {
        case format, version, placement, dense, layers, devices
        case expertBytesSpread = "expert_bytes_spread"
        case files
    }

    public static let fileName = Checkpoint.placementFileName

    public init(placement: ExpertPlacement, dense: DenseReplication, layers: [LayerDevices], devices: [DeviceBytes],
                expertBytesSpread: Double, files: [ConversionManifest.FileRecord]) {
        self.placement = placement
        self.dense = dense
        self.layers = layers
        self.devices = devices
        self.expertBytesSpread = expertBytesSpread
        self.files = files
    }

    public static func load(_ directory: URL) throws -> PlacementManifest? {
        let url = directory.appendingPathComponent(fileName)
        guard FileManager.default.fileExists(atPath: url.path) else { return nil }
        do { return try JSONDecoder().decode(PlacementManifest.self, from: FilePath.readRegularFile(url.path)) } catch {
            throw ConversionError.invalidManifest(path: url.path, reason: "\(error)")
        }
    }

    func encoded() throws -> Data {
        try PrettyJSON.encode(self)
    }
}

/// `dsconvert shard`: routed experts repacked into per-device checkpoints for expert parallelism.
public enum ShardStage {
    public static func directoryName(device: Int) -> String { "device-\(device)" }

    public static func run(input: URL, output: URL, devices: Int, denseOnce: Bool, force: Bool,
                           shardSize: ShardSize = .likeInput, resume: Bool = false,
                           progress: ((String) -> Void)? = nil) throws -> PlacementManifest {
        try refuseShardedInput(input)
        let source = try CheckpointSource(directory: input)
        return try write(source, to: output, inputStages: source.stages, devices: devices, denseOnce: denseOnce, force: force,
                         shardSize: shardSize, resume: resume, progress: progress)
    }

    /// Refuses the root of a shard output (it has `placement.json`), before it is opened as a checkpoint.
    static func refuseShardedInput(_ input: URL) throws {
        guard try PlacementManifest.load(input) == nil else {
            throw ConversionError.unsupportedInput(path: input.path, reason: "the checkpoint is already sharded")
        }
    }

    /// Writes `source` as one checkpoint per device; the manifest records the source's stages and this one.
    public static func write(_ source: TensorSource, to output: URL, inputStages: [ConversionManifest.Stage], devices: Int, denseOnce: Bool,
                             force: Bool, shardSize: ShardSize, resume: Bool, progress: ((String) -> Void)?) throws -> PlacementManifest {
        let input = source.directory
        guard source.config.placement == nil else {
            throw ConversionError.unsupportedInput(path: input.path, reason: "the checkpoint is already sharded")
        }
        let placement = try ExpertPlacement.plan(config: source.config, devices: devices, configPath: input.appendingPathComponent("config.json").path)
        let stage = ConversionManifest.Stage(stage: .shard, options: ["devices": String(devices), "dense": (denseOnce ? DenseReplication.once : .replicated).rawValue], input: input.path)
        let key = ConversionOutput.resumeKey(stages: source.newStages(after: inputStages) + [stage], input: input)
        let root = try ConversionOutput.openDirectory(input: input, output: output, force: force, resume: resume)
        if root.resumed { try removeRootFiles(of: root, devices: devices) }
        let basis = ShardSize.Basis.of(input)
        let plan = try DevicePlan(source: source, placement: placement, denseOnce: denseOnce, shardSize: shardSize, basis: basis,
                                  root: root, key: key)
        try writeShards(source, to: plan.writers, progress: progress)
        let stages = source.stages + [stage]
        let files = try finishDevices(plan, source: source, stages: stages, basis: basis)
        let manifest = placementManifest(plan, config: source.config, files: files)
        try AtomicFile.write(try manifest.encoded(), to: root.temporaryURL.appendingPathComponent(PlacementManifest.fileName))
        try AtomicFile.write(try ConversionManifest(stages: stages, files: files, layoutBasis: basis).encoded(),
                             to: root.temporaryURL.appendingPathComponent(ConversionManifest.fileName))
        try root.commit()
        return manifest
    }

    /// Root-level files of an interrupted run (placement.json, a killed write's temp file): rewritten,
    /// so removed first; this plan's device directories are the resumable work, and anything else (a
    /// directory no run of this plan writes, `device-9` of 8) would otherwise be committed with them.
    private static func removeRootFiles(of root: AtomicOutputDirectory, devices: Int) throws {
        let keep = Set((0..<devices).map(directoryName(device:)) + [AtomicOutputDirectory.ownerFileName])
        try AtomicOutputDirectory.removeEntries(of: root.temporaryURL, except: keep)
    }

    /// Every device's layout and writer: its routed experts' range, the non-expert weights (on
    /// every device, or device 0 only), each tensor with its FP8 scale companion.
    private struct DevicePlan {
        let placement: ExpertPlacement
        let denseOnce: Bool
        var writers: [CheckpointWriter] = []
        var records: [PlacementRecord] = []
        var expertBytes: [Int] = [], denseBytes: [Int] = []

        init(source: TensorSource, placement: ExpertPlacement, denseOnce: Bool, shardSize: ShardSize, basis: ShardSize.Basis?,
             root: AtomicOutputDirectory, key: ResumeKey) throws {
            (self.placement, self.denseOnce) = (placement, denseOnce)
            func planned(_ tensors: [ExpectedTensor]) -> [PlannedTensor] {
                tensors.flatMap { tensor -> [String] in
                    let scale = tensor.name + QuantizationConfig.scaleSuffix
                    return source.info(scale) != nil ? [tensor.name, scale] : [tensor.name]
                }.map { n in
                    let info = source.info(n)!
                    return PlannedTensor(name: n, dtype: info.dtype, shape: info.shape)
                }
            }
            var firstDeviceLimit: Int?
            for d in 0..<placement.devices {
                let range = placement.range(device: d)
                let record = PlacementRecord(rank: d, placement: placement, expertRange: [range.lowerBound, range.upperBound],
                                             dense: denseOnce ? .once : .replicated,
                                             denseLocation: denseOnce && d != 0 ? "../\(directoryName(device: 0))" : ".")
                var deviceConfig = source.config
                deviceConfig.placement = record
                // Non-expert weights in shards of their own, identical on every device, so devices after
                // the first hard-link device-0's instead of writing them again.
                let expected = deviceConfig.expectedTensors()
                let dense = planned(expected.filter { $0.expert == nil }), experts = planned(expected.filter { $0.expert != nil })
                denseBytes.append(dense.reduce(0) { $0 + $1.byteCount })
                expertBytes.append(experts.reduce(0) { $0 + $1.byteCount })
                // One limit for every device (device 0's), so replicated dense shards stay identical and linkable.
                let maxShardSize = firstDeviceLimit ?? shardSize.resolve(basis: basis, outputBytes: (dense + experts).reduce(0) { $0 + $1.byteCount })
                firstDeviceLimit = maxShardSize
                let layout = CheckpointLayout(groups: [dense, experts], maxShardSize: maxShardSize)
                let directory = root.temporaryURL.appendingPathComponent(directoryName(device: d))
                try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
                writers.append(CheckpointWriter(layout: layout, directory: directory, key: key, resume: root.resumed))
                records.append(record)
            }
        }
    }

    /// Every shard front to back (hashed as it is written), shards interleaved so their hashes run
    /// side by side, each input tensor read once. A dense shard equal to device-0's is linked to it
    /// once everything is written (linking waits for device-0's shard to be finished). Returns when
    /// every device's shards are finished, so a background write error (a full disk) is the one
    /// reported before any side file is written.
    private static func writeShards(_ source: TensorSource, to writers: [CheckpointWriter], progress: ((String) -> Void)?) throws {
        var units: [[(device: Int, tensor: TensorInfo)]] = []
        var links: [(device: Int, shard: Int, original: ShardPlan)] = []
        for d in writers.indices {
            for (i, shard) in writers[d].layout.shards.enumerated() {
                if d > 0, i < writers[0].layout.shards.count, case let first = writers[0].layout.shards[i],
                   first.fileName == shard.fileName, first.headerBytes == shard.headerBytes,
                   shard.tensors.allSatisfy({ TensorNames.expertIndex(of: $0.name) == nil }) {
                    links.append((d, i, first))
                } else {
                    units.append(shard.tensors.map { (d, $0) })
                }
            }
        }
        let order = WriteSchedule.interleaved(units) { $0.tensor.byteCount }
        for (k, (d, tensor)) in order.enumerated() {
            if !writers[d].isWritten(tensor.name) { try source.write(tensor.name, to: writers[d]) }
            if k % 32 == 0 || k == order.count - 1 { progress?("shard: \(k + 1)/\(order.count) tensors (device \(d))") }
        }
        for (d, i, first) in links {
            try writers[d].adoptShard(i, identicalTo: writers[0].directory.appendingPathComponent(first.fileName),
                                      sha256: try writers[0].waitForSHA256(of: first.fileName))
        }
        for writer in writers { try writer.waitForShards() }
    }

    /// Each device's side files, `config.json` (with its placement record) and manifest; returns every
    /// shard's record, named from the output's root.
    private static func finishDevices(_ plan: DevicePlan, source: TensorSource, stages: [ConversionManifest.Stage],
                                      basis: ShardSize.Basis?) throws -> [ConversionManifest.FileRecord] {
        var files: [ConversionManifest.FileRecord] = []
        for (d, writer) in plan.writers.enumerated() {
            try writer.finish()
            let directory = writer.directory
            try ConversionOutput.copySideFiles(from: source.directory, to: directory, excluding: ["config.json", PlacementManifest.fileName])
            let deviceConfig = try source.document.setting(PlacementRecord.configKey, to: plan.records[d])
            try AtomicFile.write(deviceConfig.data, to: directory.appendingPathComponent("config.json"))
            var deviceFiles: [ConversionManifest.FileRecord] = []
            for shard in writer.layout.shards {
                let sha = try writer.sha256(of: shard.fileName) ?? SHA256.hex(fileAt: directory.appendingPathComponent(shard.fileName).path)
                deviceFiles.append(.init(name: shard.fileName, bytes: shard.fileSize, sha256: sha))
                files.append(.init(name: "\(directoryName(device: d))/\(shard.fileName)", bytes: shard.fileSize, sha256: sha))
            }
            try AtomicFile.write(try ConversionManifest(stages: stages, files: deviceFiles, layoutBasis: basis).encoded(),
                                 to: directory.appendingPathComponent(ConversionManifest.fileName))
        }
        return files
    }

    /// `placement.json`: the plan, each MoE layer's expert ranges, each device's bytes and their spread.
    private static func placementManifest(_ plan: DevicePlan, config: DeepSeekConfig, files: [ConversionManifest.FileRecord]) -> PlacementManifest {
        let devices = plan.placement.devices
        let (expertBytes, denseBytes) = (plan.expertBytes, plan.denseBytes)
        let mean = Double(expertBytes.reduce(0, +)) / Double(devices)
        let spread = mean == 0 ? 0 : Double(expertBytes.max()! - expertBytes.min()!) / mean
        let ranges = (0..<devices).map { [plan.placement.range(device: $0).lowerBound, plan.placement.range(device: $0).upperBound] }
        return PlacementManifest(
            placement: plan.placement, dense: plan.denseOnce ? .once : .replicated,
            layers: config.allLayers.filter(config.isMoELayer).map { .init(layer: $0, experts: ranges) },
            devices: (0..<devices).map { .init(device: $0, directory: directoryName(device: $0), totalBytes: expertBytes[$0] + denseBytes[$0],
                                               expertBytes: expertBytes[$0], denseBytes: denseBytes[$0]) },
            expertBytesSpread: spread, files: files)
    }
}
