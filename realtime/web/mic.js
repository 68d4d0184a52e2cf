// The microphone: getUserMedia into the capture AudioWorklet (capture-worklet.js), which posts
// 50 ms frames of 16 kHz PCM16. Call `startMicrophone` from a click handler (autoplay rules:
// the AudioContext must be created by a user gesture).

export class MicError extends Error {
  constructor(message, code) {
    super(message);
    this.code = code;
  }
}

// A getUserMedia / Web Audio failure in plain words.
export function describeMicError(err) {
  const name = err && err.name;
  if (name === "NotAllowedError" || name === "PermissionDeniedError") {
    return "Microphone access was denied. Allow the microphone for this site in the browser's settings, or type your message instead.";
  }
  if (name === "NotFoundError" || name === "DevicesNotFoundError" || name === "OverconstrainedError") {
    return "No microphone was found. Plug one in, or type your message instead.";
  }
  if (name === "NotReadableError" || name === "TrackStartError") {
    return "The microphone could not be opened: another program may be using it.";
  }
  if (name === "SecurityError" || name === "no_media") {
    return "The microphone needs a secure page: open this page over https, or on localhost.";
  }
  return `The microphone could not be started (${(err && err.message) || name || "unknown error"}).`;
}

// Start capturing. `onFrame(ArrayBuffer)` receives each 1600-byte frame; `onEnded()` is called
// if the device goes away. Returns {sampleRate, stop()}.
export async function startMicrophone(onFrame, onEnded) {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new MicError(describeMicError({ name: "no_media" }), "no_media");
  }
  const context = new AudioContext();
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: { ideal: 1 }, echoCancellation: true, noiseSuppression: true },
      video: false,
    });
  } catch (err) {
    await context.close();
    throw new MicError(describeMicError(err), err && err.name);
  }
  try {
    await context.audioWorklet.addModule("/web/capture-worklet.js");
    const source = context.createMediaStreamSource(stream);
    const node = new AudioWorkletNode(context, "pcm16-capture", {
      numberOfInputs: 1,
      numberOfOutputs: 1,
      outputChannelCount: [1],
      channelCountMode: "max",
    });
    node.port.onmessage = (event) => onFrame(event.data);
    source.connect(node);
    node.connect(context.destination); // keeps the graph pulled; the node outputs silence
    if (context.state === "suspended") await context.resume();
    for (const track of stream.getAudioTracks()) {
      track.addEventListener("ended", () => onEnded && onEnded());
    }
    return {
      sampleRate: context.sampleRate,
      async stop() {
        node.port.postMessage("stop");
        node.port.onmessage = null;
        source.disconnect();
        node.disconnect();
        for (const track of stream.getTracks()) track.stop();
        await context.close();
      },
    };
  } catch (err) {
    for (const track of stream.getTracks()) track.stop();
    await context.close();
    throw new MicError(describeMicError(err), err && err.name);
  }
}
