"""What the emulator says, in each output language of the catalog.

Each reply states plainly that it comes from omniserve's offline emulator and what it received,
so a developer testing a client sees the request as the server understood it.
"""

from __future__ import annotations

from dataclasses import dataclass

from omniserve.catalog import Language


@dataclass(frozen=True)
class MediaFacts:
    """One decoded media item as the reply describes it."""

    modality: str  # "image" | "audio" | "video" | "frames"
    tokens: int
    width: int = 0  # the source's size
    height: int = 0
    seconds: float = 0.0
    frames: int = 0
    audio_tokens: int = 0  # a video file's soundtrack
    heard: str = ""  # an audio clip's words, from the server's speech recognizer


@dataclass(frozen=True)
class Received:
    """The facts a reply reports."""

    model: str
    messages: int
    user: int
    assistant: int
    system: int
    inputs: dict[str, int]  # modality -> count of items ("image": 2)
    prompt_tokens: int
    last_user_text: str
    voice: str | None
    system_ignored: bool
    media: tuple[MediaFacts, ...] = ()


@dataclass(frozen=True)
class Phrases:
    greeting: str
    intro: str  # {model}
    received: str  # {messages} {user} {assistant} {system}
    inputs_text_only: str
    inputs_media: str  # {items}
    media_names: dict[str, str]  # modality -> word
    tokens: str  # {tokens}
    last: str  # {excerpt}
    voice: str  # {voice}
    system_ignored: str  # {model}
    closings: tuple[str, ...]
    reasoning: tuple[str, ...]  # {excerpt} {messages} {tokens}
    # One sentence per media item: {n} {width} {height} {seconds} {frames} {tokens} {audio}
    image_item: str = "Image {n}: {width}x{height} pixels, {tokens} tokens."
    audio_item: str = "Audio {n}: {seconds} seconds, {tokens} tokens."
    video_item: str = "Video {n}: {seconds} seconds, {frames} frames, {tokens} tokens."
    frames_item: str = "Video {n}: a list of {frames} images, {tokens} tokens."
    soundtrack: str = "Its sound: {audio} audio tokens."
    heard: str = "In it I heard: {text}."
    quote: tuple[str, str] = ("\u201c", "\u201d")
    sep: str = " "


PHRASES: dict[Language, Phrases] = {
    Language.EN: Phrases(
        greeting="Hello!",
        intro="This is omniserve's offline emulator, answering as {model}.",
        received=(
            "I received {messages} message(s): {user} from the user, {assistant} from the "
            "assistant and {system} system."
        ),
        inputs_text_only="The input was text only.",
        inputs_media="The input held {items} besides text.",
        media_names={"image": "image(s)", "audio": "audio clip(s)", "video": "video(s)"},
        tokens="That came to {tokens} prompt tokens.",
        last="Your last message was: {excerpt}.",
        voice="I am speaking with the voice {voice}.",
        system_ignored="The system message was ignored, as {model} does when it speaks.",
        closings=(
            "No model ran, so this reply is the same every time for the same request and seed.",
            "Point your client at a real engine when you want a real answer.",
            "Everything here was generated offline, with no network and no model weights.",
        ),
        reasoning=(
            "The user wrote {excerpt}.",
            "The conversation has {messages} message(s) and {tokens} prompt tokens.",
            "I am the offline emulator, so I should describe the request instead of answering it.",
            "I will say what I received, clearly and briefly.",
        ),
        quote=('"', '"'),
    ),
    Language.ZH: Phrases(
        image_item="图片 {n}：{width}×{height} 像素，{tokens} 个 token。",
        audio_item="音频 {n}：{seconds} 秒，{tokens} 个 token。",
        video_item="视频 {n}：{seconds} 秒，抽取 {frames} 帧，{tokens} 个 token。",
        frames_item="视频 {n}：由 {frames} 张图片组成，{tokens} 个 token。",
        soundtrack="其中的声音：{audio} 个音频 token。",
        heard="我听到的是：{text}。",
        greeting="你好！",
        intro="这里是 omniserve 的离线模拟引擎，正在代替 {model} 回答。",
        received=(
            "我收到了 {messages} 条消息：用户 {user} 条，助手 {assistant} 条，系统 {system} 条。"
        ),
        inputs_text_only="输入只有文本。",
        inputs_media="除了文本，输入还包含{items}。",
        media_names={"image": "张图片", "audio": "段音频", "video": "个视频"},
        tokens="输入共计 {tokens} 个 token。",
        last="你最后说的是：{excerpt}。",
        voice="我正在用 {voice} 的音色说话。",
        system_ignored="系统消息已被忽略，{model} 输出语音时就是这样。",
        closings=(
            "这里没有运行任何模型，同样的请求和种子总会得到同样的回复。",
            "想要真正的回答，请把客户端指向真实的引擎。",
            "这里的一切都是离线生成的，不需要网络，也不需要模型权重。",
        ),
        reasoning=(
            "用户写的是{excerpt}。",
            "对话共有 {messages} 条消息，{tokens} 个输入 token。",
            "我是离线模拟引擎，应该描述请求，而不是回答它。",
            "我会简洁清楚地说明收到了什么。",
        ),
        sep="",
    ),
    Language.FR: Phrases(
        image_item="Image {n} : {width}x{height} pixels, {tokens} jetons.",
        audio_item="Audio {n} : {seconds} secondes, {tokens} jetons.",
        video_item="Vidéo {n} : {seconds} secondes, {frames} images, {tokens} jetons.",
        frames_item="Vidéo {n} : une liste de {frames} images, {tokens} jetons.",
        soundtrack="Son : {audio} jetons audio.",
        heard="J'y ai entendu : {text}.",
        greeting="Bonjour !",
        intro="Ici l'émulateur hors ligne d'omniserve, qui répond à la place de {model}.",
        received=(
            "J'ai reçu {messages} message(s) : {user} de l'utilisateur, {assistant} de "
            "l'assistant et {system} système."
        ),
        inputs_text_only="L'entrée ne contenait que du texte.",
        inputs_media="En plus du texte, l'entrée contenait {items}.",
        media_names={"image": "image(s)", "audio": "extrait(s) audio", "video": "vidéo(s)"},
        tokens="Cela fait {tokens} jetons d'entrée.",
        last="Votre dernier message était : {excerpt}.",
        voice="Je parle avec la voix {voice}.",
        system_ignored="Le message système a été ignoré, comme le fait {model} quand il parle.",
        closings=(
            "Aucun modèle n'a tourné : la même requête avec la même graine donne la même réponse.",
            "Connectez votre client à un vrai moteur pour obtenir une vraie réponse.",
            "Tout ceci a été produit hors ligne, sans réseau ni poids de modèle.",
        ),
        reasoning=(
            "L'utilisateur a écrit {excerpt}.",
            "La conversation compte {messages} message(s) et {tokens} jetons d'entrée.",
            "Je suis l'émulateur hors ligne, je dois décrire la requête plutôt que d'y répondre.",
        ),
        quote=("« ", " »"),
    ),
    Language.DE: Phrases(
        image_item="Bild {n}: {width}x{height} Pixel, {tokens} Token.",
        audio_item="Audio {n}: {seconds} Sekunden, {tokens} Token.",
        video_item="Video {n}: {seconds} Sekunden, {frames} Bilder, {tokens} Token.",
        frames_item="Video {n}: eine Liste von {frames} Bildern, {tokens} Token.",
        soundtrack="Ton: {audio} Audio-Token.",
        heard="Darin habe ich gehört: {text}.",
        greeting="Hallo!",
        intro="Hier spricht der Offline-Emulator von omniserve anstelle von {model}.",
        received=(
            "Ich habe {messages} Nachricht(en) erhalten: {user} vom Benutzer, {assistant} vom "
            "Assistenten und {system} vom System."
        ),
        inputs_text_only="Die Eingabe bestand nur aus Text.",
        inputs_media="Neben Text enthielt die Eingabe {items}.",
        media_names={"image": "Bild(er)", "audio": "Audioclip(s)", "video": "Video(s)"},
        tokens="Das ergibt {tokens} Eingabe-Token.",
        last="Ihre letzte Nachricht war: {excerpt}.",
        voice="Ich spreche mit der Stimme {voice}.",
        system_ignored="Die Systemnachricht wurde ignoriert, wie es {model} bei Sprachausgabe tut.",
        closings=(
            "Es lief kein Modell: Dieselbe Anfrage mit demselben Seed ergibt dieselbe Antwort.",
            "Verbinden Sie Ihren Client mit einer echten Engine, um echte Antworten zu erhalten.",
            "Alles hier wurde offline erzeugt, ohne Netzwerk und ohne Modellgewichte.",
        ),
        reasoning=(
            "Der Benutzer schrieb {excerpt}.",
            "Das Gespräch hat {messages} Nachricht(en) und {tokens} Eingabe-Token.",
            "Ich bin der Offline-Emulator und beschreibe die Anfrage, statt sie zu beantworten.",
        ),
        quote=("„", "“"),
    ),
    Language.RU: Phrases(
        image_item="Изображение {n}: {width}x{height} пикселей, токенов: {tokens}.",
        audio_item="Аудио {n}: {seconds} с, токенов: {tokens}.",
        video_item="Видео {n}: {seconds} с, кадров: {frames}, токенов: {tokens}.",
        frames_item="Видео {n}: список из {frames} изображений, токенов: {tokens}.",
        soundtrack="Звук: аудиотокенов {audio}.",
        heard="В нём я услышал: {text}.",
        greeting="Здравствуйте!",
        intro="Это офлайн-эмулятор omniserve, он отвечает вместо {model}.",
        received=(
            "Я получил сообщений: {messages}; от пользователя: {user}, от ассистента: "
            "{assistant}, системных: {system}."
        ),
        inputs_text_only="Во входных данных был только текст.",
        inputs_media="Кроме текста, во входных данных было: {items}.",
        media_names={"image": "изображений", "audio": "аудиозаписей", "video": "видео"},
        tokens="Всего входных токенов: {tokens}.",
        last="Ваше последнее сообщение: {excerpt}.",
        voice="Я говорю голосом {voice}.",
        system_ignored=(
            "Системное сообщение проигнорировано, как это делает {model} при выводе речи."
        ),
        closings=(
            "Модель не запускалась, поэтому тот же запрос с тем же seed даёт тот же ответ.",
            "Подключите клиент к настоящему движку, чтобы получить настоящий ответ.",
            "Всё это создано офлайн, без сети и без весов модели.",
        ),
        reasoning=(
            "Пользователь написал {excerpt}.",
            "В диалоге сообщений: {messages}, входных токенов: {tokens}.",
            "Я офлайн-эмулятор, поэтому описываю запрос, а не отвечаю на него.",
        ),
        quote=("«", "»"),
    ),
    Language.IT: Phrases(
        image_item="Immagine {n}: {width}x{height} pixel, {tokens} token.",
        audio_item="Audio {n}: {seconds} secondi, {tokens} token.",
        video_item="Video {n}: {seconds} secondi, {frames} fotogrammi, {tokens} token.",
        frames_item="Video {n}: una lista di {frames} immagini, {tokens} token.",
        soundtrack="Audio della traccia: {audio} token audio.",
        heard="Ho sentito: {text}.",
        greeting="Ciao!",
        intro="Sono l'emulatore offline di omniserve e rispondo al posto di {model}.",
        received=(
            "Ho ricevuto {messages} messaggio/i: {user} dall'utente, {assistant} "
            "dall'assistente e {system} di sistema."
        ),
        inputs_text_only="L'input conteneva solo testo.",
        inputs_media="Oltre al testo, l'input conteneva {items}.",
        media_names={"image": "immagine/i", "audio": "clip audio", "video": "video"},
        tokens="In totale sono {tokens} token di input.",
        last="Il tuo ultimo messaggio era: {excerpt}.",
        voice="Sto parlando con la voce {voice}.",
        system_ignored="Il messaggio di sistema è stato ignorato, come fa {model} quando parla.",
        closings=(
            "Nessun modello è stato eseguito: stessa richiesta e stesso seed, stessa risposta.",
            "Collega il tuo client a un motore reale per avere una risposta reale.",
            "Tutto è stato generato offline, senza rete e senza pesi del modello.",
        ),
        reasoning=(
            "L'utente ha scritto {excerpt}.",
            "La conversazione ha {messages} messaggio/i e {tokens} token di input.",
            "Sono l'emulatore offline, quindi descrivo la richiesta invece di rispondere.",
        ),
        quote=("«", "»"),
    ),
    Language.ES: Phrases(
        image_item="Imagen {n}: {width}x{height} píxeles, {tokens} tokens.",
        audio_item="Audio {n}: {seconds} segundos, {tokens} tokens.",
        video_item="Vídeo {n}: {seconds} segundos, {frames} fotogramas, {tokens} tokens.",
        frames_item="Vídeo {n}: una lista de {frames} imágenes, {tokens} tokens.",
        soundtrack="Su sonido: {audio} tokens de audio.",
        heard="Escuché: {text}.",
        greeting="¡Hola!",
        intro="Soy el emulador sin conexión de omniserve y respondo en lugar de {model}.",
        received=(
            "Recibí {messages} mensaje(s): {user} del usuario, {assistant} del asistente y "
            "{system} del sistema."
        ),
        inputs_text_only="La entrada solo contenía texto.",
        inputs_media="Además del texto, la entrada contenía {items}.",
        media_names={"image": "imagen(es)", "audio": "clip(s) de audio", "video": "vídeo(s)"},
        tokens="En total son {tokens} tokens de entrada.",
        last="Tu último mensaje fue: {excerpt}.",
        voice="Estoy hablando con la voz {voice}.",
        system_ignored="El mensaje del sistema se ignoró, como hace {model} cuando habla.",
        closings=(
            "No se ejecutó ningún modelo: la misma solicitud y la misma semilla dan la "
            "misma respuesta.",
            "Conecta tu cliente a un motor real para obtener una respuesta real.",
            "Todo se generó sin conexión, sin red y sin pesos de modelo.",
        ),
        reasoning=(
            "El usuario escribió {excerpt}.",
            "La conversación tiene {messages} mensaje(s) y {tokens} tokens de entrada.",
            "Soy el emulador sin conexión, así que describo la solicitud en lugar de responderla.",
        ),
        quote=("«", "»"),
    ),
    Language.PT: Phrases(
        image_item="Imagem {n}: {width}x{height} pixels, {tokens} tokens.",
        audio_item="Áudio {n}: {seconds} segundos, {tokens} tokens.",
        video_item="Vídeo {n}: {seconds} segundos, {frames} quadros, {tokens} tokens.",
        frames_item="Vídeo {n}: uma lista de {frames} imagens, {tokens} tokens.",
        soundtrack="Seu som: {audio} tokens de áudio.",
        heard="Ouvi: {text}.",
        greeting="Olá!",
        intro="Aqui é o emulador offline do omniserve, respondendo no lugar de {model}.",
        received=(
            "Recebi {messages} mensagem(ns): {user} do usuário, {assistant} do assistente e "
            "{system} do sistema."
        ),
        inputs_text_only="A entrada continha apenas texto.",
        inputs_media="Além do texto, a entrada continha {items}.",
        media_names={"image": "imagem(ns)", "audio": "clipe(s) de áudio", "video": "vídeo(s)"},
        tokens="No total são {tokens} tokens de entrada.",
        last="Sua última mensagem foi: {excerpt}.",
        voice="Estou falando com a voz {voice}.",
        system_ignored="A mensagem de sistema foi ignorada, como {model} faz quando fala.",
        closings=(
            "Nenhum modelo foi executado: a mesma solicitação com a mesma semente dá a "
            "mesma resposta.",
            "Conecte seu cliente a um motor real para obter uma resposta real.",
            "Tudo foi gerado offline, sem rede e sem pesos de modelo.",
        ),
        reasoning=(
            "O usuário escreveu {excerpt}.",
            "A conversa tem {messages} mensagem(ns) e {tokens} tokens de entrada.",
            "Sou o emulador offline, então descrevo a solicitação em vez de respondê-la.",
        ),
    ),
    Language.JA: Phrases(
        image_item="画像 {n}：{width}×{height} ピクセル、{tokens} トークン。",
        audio_item="音声 {n}：{seconds} 秒、{tokens} トークン。",
        video_item="動画 {n}：{seconds} 秒、{frames} フレーム、{tokens} トークン。",
        frames_item="動画 {n}：{frames} 枚の画像のリスト、{tokens} トークン。",
        soundtrack="その音声：{audio} 音声トークン。",
        heard="聞き取った言葉：{text}。",
        greeting="こんにちは！",
        intro="こちらは omniserve のオフラインエミュレーターで、{model} の代わりに応答しています。",
        received=(
            "メッセージを {messages} 件受け取りました。ユーザー {user} 件、アシスタント "
            "{assistant} 件、システム {system} 件です。"
        ),
        inputs_text_only="入力はテキストのみでした。",
        inputs_media="テキストのほかに、{items}が含まれていました。",
        media_names={"image": "枚の画像", "audio": "件の音声", "video": "本の動画"},
        tokens="入力トークンは合計 {tokens} 個です。",
        last="最後のメッセージは{excerpt}でした。",
        voice="{voice} の声で話しています。",
        system_ignored="システムメッセージは無視されました。{model} は音声出力時にそうします。",
        closings=(
            "モデルは動いていないので、同じリクエストと同じシードなら毎回同じ応答になります。",
            "本当の回答が必要なときは、クライアントを実際のエンジンに向けてください。",
            "ここにあるものはすべて、ネットワークもモデルの重みも使わずに生成されました。",
        ),
        reasoning=(
            "ユーザーは{excerpt}と書きました。",
            "会話には {messages} 件のメッセージと {tokens} 個の入力トークンがあります。",
            "私はオフラインエミュレーターなので、答える代わりにリクエストを説明します。",
        ),
        quote=("「", "」"),
        sep="",
    ),
    Language.KO: Phrases(
        image_item="이미지 {n}: {width}×{height} 픽셀, 토큰 {tokens}개.",
        audio_item="오디오 {n}: {seconds}초, 토큰 {tokens}개.",
        video_item="동영상 {n}: {seconds}초, 프레임 {frames}개, 토큰 {tokens}개.",
        frames_item="동영상 {n}: 이미지 {frames}장 목록, 토큰 {tokens}개.",
        soundtrack="소리: 오디오 토큰 {audio}개.",
        heard="들린 말: {text}.",
        greeting="안녕하세요!",
        intro="omniserve의 오프라인 에뮬레이터가 {model} 대신 답하고 있습니다.",
        received=(
            "메시지 {messages}개를 받았습니다. 사용자 {user}개, 어시스턴트 {assistant}개, "
            "시스템 {system}개입니다."
        ),
        inputs_text_only="입력은 텍스트뿐이었습니다.",
        inputs_media="텍스트 외에 {items}이 포함되어 있었습니다.",
        media_names={"image": "개의 이미지", "audio": "개의 오디오", "video": "개의 동영상"},
        tokens="입력 토큰은 모두 {tokens}개입니다.",
        last="마지막 메시지는 {excerpt}였습니다.",
        voice="{voice} 목소리로 말하고 있습니다.",
        system_ignored="시스템 메시지는 무시되었습니다. {model}은 음성을 출력할 때 그렇게 합니다.",
        closings=(
            "모델이 실행되지 않았으므로 같은 요청과 같은 시드에는 항상 같은 답이 나옵니다.",
            "진짜 답변이 필요하면 클라이언트를 실제 엔진에 연결하세요.",
            "여기 있는 모든 것은 네트워크와 모델 가중치 없이 오프라인으로 생성되었습니다.",
        ),
        reasoning=(
            "사용자는 {excerpt}라고 썼습니다.",
            "대화에는 메시지 {messages}개와 입력 토큰 {tokens}개가 있습니다.",
            "저는 오프라인 에뮬레이터이므로 답하는 대신 요청을 설명합니다.",
        ),
        quote=("\u201c", "\u201d"),
    ),
}

EXCERPT_CHARS = 80


def excerpt(text: str, phrases: Phrases) -> str:
    flat = " ".join(text.split())
    if len(flat) > EXCERPT_CHARS:
        flat = flat[: EXCERPT_CHARS - 1].rstrip() + "…"
    return f"{phrases.quote[0]}{flat}{phrases.quote[1]}"


def _items(received: Received, phrases: Phrases, language: Language) -> str:
    parts = []
    for modality in ("image", "audio", "video"):
        count = received.inputs.get(modality, 0)
        if count:
            word = phrases.media_names[modality]
            joiner = "" if language in (Language.ZH, Language.JA, Language.KO) else " "
            parts.append(f"{count}{joiner}{word}")
    return ", ".join(parts)


def compose_answer(received: Received, language: Language, closing: int) -> str:
    """The reply text; ``closing`` picks one of the closing sentences (seeded by the caller)."""
    p = PHRASES[language]
    sentences = [
        p.greeting,
        p.intro.format(model=received.model),
        p.received.format(
            messages=received.messages,
            user=received.user,
            assistant=received.assistant,
            system=received.system,
        ),
        p.inputs_media.format(items=_items(received, p, language))
        if received.inputs
        else p.inputs_text_only,
        p.tokens.format(tokens=received.prompt_tokens),
    ]
    sentences.extend(_media_sentences(received.media, p))
    if received.last_user_text.strip():
        sentences.append(p.last.format(excerpt=excerpt(received.last_user_text, p)))
    if received.voice:
        sentences.append(p.voice.format(voice=received.voice))
    if received.system_ignored:
        sentences.append(p.system_ignored.format(model=received.model))
    sentences.append(p.closings[closing % len(p.closings)])
    return p.sep.join(sentences)


def _media_sentences(media: tuple[MediaFacts, ...], p: Phrases) -> list[str]:
    out = []
    for n, m in enumerate(media, start=1):
        template = {"image": p.image_item, "audio": p.audio_item, "video": p.video_item,
                    "frames": p.frames_item}[m.modality]  # fmt: skip
        out.append(
            template.format(
                n=n,
                width=m.width,
                height=m.height,
                seconds=f"{m.seconds:.1f}",
                frames=m.frames,
                tokens=m.tokens,
            )
        )
        if m.audio_tokens:
            out.append(p.soundtrack.format(audio=m.audio_tokens))
        if m.heard:
            out.append(p.heard.format(text=f"{p.quote[0]}{m.heard}{p.quote[1]}"))
    return out


def compose_reasoning(received: Received, language: Language) -> str:
    p = PHRASES[language]
    values = {
        "excerpt": excerpt(received.last_user_text, p),
        "messages": received.messages,
        "tokens": received.prompt_tokens,
    }
    return p.sep.join(s.format(**values) for s in p.reasoning)
