import CLI
import DSConvertCommands
import Foundation

exit(CommandLineTool.runSingle(ShardCommand.self, invocation: "dsconvert-shard", arguments: Array(CommandLine.arguments.dropFirst())))
