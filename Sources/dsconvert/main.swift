import CLI
import DSConvertCommands
import Foundation

exit(CommandLineTool.runFront(tool: "dsconvert", abstract: DSConvertCommands.abstract,
                              commands: DSConvertCommands.all, arguments: Array(CommandLine.arguments.dropFirst())))
